"""Joint learning of a backbone and an EBM prior (Joint-EBM eq. 15-19; DESIGN §3 "Joint learning").

The model is p(x, z) = p(x | z) p_EBM(z), p_EBM(z) = exp(F(z)) p_Gauss(z) / Z. One scalar loss whose
gradient, parameter group by parameter group, is the paper's (minimise it):

    loss = recon                    -log p(x | z+)                            eq. 16 (generator), eq. 19 (through z+)
         + w * gauss_positive       KL(q || p_Gauss)  [variational]           eq. 18 positive phase, eq. 19
                                    -log p_Gauss(z+)  [MLE, z+ fixed]         eq. 18 positive phase
         + w * ebm_positive         -F(z+)                                    eq. 17 positive phase, eq. 19 E_q F(z)
         + w * negative_phase       F(z-) + log p_Gauss(z-),  z- fixed        eq. 17 and eq. 18 negative phases
         + energy_l2 * (F(sg z+)^2 + F(z-)^2)                                 regulariser of the EBM only

z+ is the posterior draw: q's reparametrised sample (variational learning; gradients flow through it
into the inference network, eq. 19) or a posterior Langevin sample (MLE, passed detached). z- = T(u-)
are the prior Langevin negatives, always detached (the chain is not differentiated). `w` is the KL
warm-up weight; it multiplies every prior term, positive and negative phase alike, so the phases of
eq. 17 and eq. 18 stay balanced at any w (w = 1 is the paper's objective).

Which parameters each term moves:
- recon: the decoder (eq. 16) and, through the reparametrised z+, the inference network (eq. 19).
- gauss_positive: the Gaussian conditionals p(z_i | z_{>i}) (eq. 18, E_q grad log p(z_i | z_{>i})
  in expectation for the analytic KL) and the inference network (eq. 19, -KL(q || p_Gauss)).
- ebm_positive: the EBM (eq. 17, E_q grad f(z)) and the inference network (eq. 19, E_q F(z)).
- negative_phase: the EBM (eq. 17, -E_pEBM grad f(z-)) and the Gaussian conditionals
  (eq. 18, -E_pEBM grad log p(z_i- | z_{>i}-)); nothing else, since z- is detached and neither
  the decoder nor the encoder enters F or log p_Gauss.
- energy_l2: the EBM only (z+ detached in it).
For vlae, T = identity and p_Gauss = N(0, I): eq. 18 has no parameters.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from hebmctl.models.backbone import Backbone

__all__ = ["JointLoss", "joint_loss"]


@dataclass(frozen=True)
class JointLoss:
    """The terms of the joint objective (scalars `[]`, each a batch mean) and their weighted sum `total`."""

    recon: Tensor
    gauss_positive: Tensor
    ebm_positive: Tensor
    negative_phase: Tensor
    energy_l2: Tensor
    total: Tensor
    neg_energy_pos: Tensor  # F(z+) `[B]`, detached, for logging
    neg_energy_neg: Tensor  # F(z-) `[B]`, detached, for logging
    energy_l2_weight: float = 0.0
    x_mean: Tensor | None = None  # decoder means at z+ `[B, C, H, W]`, detached, for logging

    @property
    def energy_gap(self) -> float:
        """mean F(z+) - mean F(z-) (the EBM's contrast; a runaway value means divergence)."""
        return float(self.neg_energy_pos.mean() - self.neg_energy_neg.mean())

    @property
    def ebm_term(self) -> float:
        """The EBM's own loss (eq. 17's contrast plus its L2 term): mean F(z-) - mean F(z+) + energy_l2 * l2."""
        return float(self.neg_energy_neg.mean() - self.neg_energy_pos.mean() + self.energy_l2_weight * self.energy_l2.detach())

    def record(self) -> dict[str, float]:
        """Python floats for metrics.jsonl."""
        return {"loss": float(self.total.detach()), "recon_nll": float(self.recon.detach()), "gauss_positive": float(self.gauss_positive.detach()),
                "ebm_term": self.ebm_term, "energy_gap": self.energy_gap,
                "neg_energy_pos": float(self.neg_energy_pos.mean()), "neg_energy_neg": float(self.neg_energy_neg.mean())}

    def is_finite(self) -> bool:
        return bool(torch.isfinite(self.total) and torch.isfinite(self.neg_energy_pos).all() and torch.isfinite(self.neg_energy_neg).all())


def joint_loss(
    backbone: Backbone,
    energy: nn.Module,
    x: Tensor,
    z_pos: Tensor,
    z_neg: Tensor,
    kl: Tensor | None,
    log_std_x: Tensor | None = None,
    kl_weight: float = 1.0,
    energy_l2: float = 0.0,
) -> JointLoss:
    """The joint objective for images x `[B, C, H, W]`, posterior draws z_pos `[B, D]`, negatives z_neg `[B', D]`.

    kl `[B, L]`: q's per-layer KL(q || p_Gauss) for a reparametrised z_pos (variational learning);
    None for MLE, where z_pos is a fixed posterior Langevin sample and eq. 18's positive phase is
    -log p_Gauss(z_pos). `energy` maps z `[B, D]` to F(z) `[B]`. `log_std_x`: the decoder's log std
    (default: the stored one).
    """
    z_neg = z_neg.detach()
    if kl is None:
        z_pos = z_pos.detach()
        gauss_positive = -backbone.log_prior_gauss(z_pos).mean()  # eq. 18, positive phase at fixed samples
    else:
        gauss_positive = kl.sum(-1).mean()  # eq. 18 (positive phase) and eq. 19 (-KL)
    params = backbone.decode_params(z_pos)
    x_mean = backbone.likelihood.mean(params)
    recon = backbone.recon_nll(x, params, log_std_x).mean()  # eq. 16, eq. 19
    f_pos = energy(z_pos)
    f_neg = energy(z_neg)
    ebm_positive = -f_pos.mean()  # eq. 17 positive phase; eq. 19's E_q F(z)
    negative_phase = f_neg.mean() + backbone.log_prior_gauss(z_neg).mean()  # eq. 17 and eq. 18 negative phases
    l2 = (energy(z_pos.detach()).pow(2).mean() + f_neg.pow(2).mean()) if energy_l2 > 0 else torch.zeros((), device=x.device)
    total = recon + kl_weight * (gauss_positive + ebm_positive + negative_phase) + energy_l2 * l2
    return JointLoss(recon=recon, gauss_positive=gauss_positive, ebm_positive=ebm_positive, negative_phase=negative_phase, energy_l2=l2,
                     total=total, neg_energy_pos=f_pos.detach(), neg_energy_neg=f_neg.detach(),
                     energy_l2_weight=energy_l2, x_mean=x_mean.detach())


def inference_loss(backbone: Backbone, energy: nn.Module, x: Tensor, z_q: Tensor, kl: Tensor, log_std_x: Tensor | None = None) -> Tensor:
    """Eq. 19's objective, negated: -[log p(x | z_q) - KL(q || p_Gauss) + F(z_q)] (batch mean, `[]`).

    MLE learning with posterior Langevin started from q keeps q a good initialiser with this loss;
    the caller applies its gradient to the inference parameters only (`inference_parameters`), the
    generator, prior and EBM being learned from the Langevin samples.
    """
    return (backbone.recon_nll(x, backbone.decode_params(z_q), log_std_x) + kl.sum(-1) - energy(z_q)).mean()


def inference_parameters(backbone: Backbone, x: Tensor) -> list[nn.Parameter]:
    """The parameters of q alone: those a posterior draw depends on, minus those of the generative model
    (decoder, T, p_Gauss), found by autograd on images x `[B, C, H, W]` (no family names needed)."""
    params = [p for p in backbone.parameters() if p.requires_grad]

    def reached(value: Tensor) -> set[int]:
        grads = torch.autograd.grad(value, params, allow_unused=True)
        return {i for i, g in enumerate(grads) if g is not None}

    z, _ = backbone.posterior(x, None, sample=False)
    generative = reached(backbone.decode(z.detach()).sum() + backbone.log_prior_gauss(z.detach()).sum()
                         + backbone.u_to_z(z.detach()).sum())
    return [params[i] for i in sorted(reached(z.sum()) - generative)]
