"""Diff-EBM prior in u-space (DESIGN §3 "Diffusion scheme"): conditional EBMs log p(u_t | u_{t+1}) along a
short diffusion, sampled by reverse diffusion from u_T ~ N(0, I)."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from hebmctl.metrics.likelihood import SCORE_TERMS, layer_mask, posterior_u
from hebmctl.models.backbone import Backbone
from hebmctl.models.ebm_losses import diffusion_ebm_loss
from hebmctl.models.energy import JointEnergy
from hebmctl.noise import Noise, randint
from hebmctl.priors.base import PosteriorLangevin, SamplingOptions, TrainingOutcome, Trajectory
from hebmctl.priors.energy_prior import EnergyPrior
from hebmctl.samplers import (
    ChainStats,
    anchor_step_sizes_sq,
    conditional_log_density,
    forward_pairs,
    langevin,
    make_schedule,
    reverse_diffusion_sample,
)
from hebmctl.samplers.conditional import resample_masked_diffusion
from hebmctl.schemas.prior import LabelCoupling, TrainPriorConfig


class DiffusionPrior(EnergyPrior):
    kind = "diffusion"
    supports_labels = True  # coupled at t = 0 (Diff-EBM sec. 3.3)
    energy_in_score = "Diff-EBM sec. 5.2: G^{>k}(u_0, 0) / s_0^2 of u_0 ~ p(u_0 | u_1), u_1 = the posterior's u_{>k} at level 1"

    def __init__(self, config: TrainPriorConfig, energy: JointEnergy, backbone: Backbone, device: torch.device,
                 options: SamplingOptions, coupling: LabelCoupling | None = None) -> None:
        super().__init__(config, energy, backbone, device, options, coupling)
        self.schedule = make_schedule(config.schedule, config.T).to(device)
        self.step_sizes_sq = anchor_step_sizes_sq(self.schedule, config.b2).to(device)  # training s_t^2 `[T]`

    @classmethod
    def resolve_step(cls, config: TrainPriorConfig, n_steps: int, options: SamplingOptions) -> float:
        """The scale of every s_t: --step-scale, else sqrt(K_train / K) (CDRL's fewer-steps adjustment)."""
        return options.step_scale if options.step_scale is not None else math.sqrt(config.langevin_steps / max(n_steps, 1))

    @classmethod
    def n_levels(cls, config: TrainPriorConfig) -> int:
        return config.T

    def level_scale(self, t: Tensor | None, like: Tensor) -> Tensor:
        """s_t^2 `[B]`: the level-t density holds G / s_t^2 (scaled parametrisation), so class logits are G(z, y, t) / s_t^2."""
        return self.step_sizes_sq[t].to(like.dtype)

    def coupled_rows(self, t: Tensor | None, like: Tensor) -> Tensor:
        """The rows at t = 0, where Diff-EBM couples the label (sec. 3.3): log p(u_0, y | u_1) uses F(z, y); every row with
        --label-levels all (the all-level coupling variant: log p(u_t, y | u_{t+1}) uses F(z_t, y, t) at each level)."""
        return torch.ones_like(t, dtype=torch.bool) if self.config.label_levels == "all" else t == 0

    def coupled_levels(self) -> str:
        return "every level (--label-levels all)" if self.config.label_levels == "all" else "t = 0"

    def from_noise(self, u_top: Tensor, generator: torch.Generator) -> tuple[Tensor, list[ChainStats]]:
        """Reverse diffusion u_T = u_top -> u_0, K Langevin steps per level (Diff-EBM Alg. 2)."""
        return reverse_diffusion_sample(self.neg_energy_on_u, u_top, self.schedule, self.step_sizes_sq, self.n_steps, generator,
                                        step_scale=self.step_size, runner=self.runner)

    def resample_masked(self, u_fixed: Tensor, mask: Tensor, generator: torch.Generator) -> Tensor:
        return resample_masked_diffusion(self.neg_energy_on_u, u_fixed, mask, self.schedule, self.step_sizes_sq, self.n_steps, generator,
                                         self.step_size)[0]

    def top_neg_energy(self, u: Tensor, k: int) -> Tensor:
        """G^{>k}(u, 0) / s_0^2 `[B]` of u `[B, D]`: the level-0 negative energy of the groups of layers z_{k+1} .. z_L of
        z = T(u) only (F = sum_i f_i(z_i, t), so this is the sum over the top groups; a labelled group is marginalised
        over its classes by logsumexp)."""
        t = self._levels(0, u)
        z = self.backbone.u_to_z(u)
        if self.labels is not None:  # the marginal over the real classes of the top groups' class logits
            logits = self.energy.class_logits(z, t, groups=range(k, self.backbone.num_layers))
            return self.labels.marginal(logits, self.level_scale(t, u)) / float(self.step_sizes_sq[0])
        top = self.energy.group_neg_energies(z, t)[k:]
        return torch.stack(top, 0).sum(0) / float(self.step_sizes_sq[0])

    def diffebm_ood(self, u_q: Tensor, k: int, generator: torch.Generator) -> Tensor:
        """Diff-EBM's OOD score (sec. 5.2, Fig. 3; DESIGN §3 "Scores"), higher = more OOD: u_q `[B, D]` (a posterior
        draw in u-space) -> `[B]`.

        1. u_1 = alpha_1 u_q + sigma_1 eps on the top layers u_{>k} (the forward kernel to level 1), and
           u_1 = eps ~ N(0, I) on u_{<=k} (the level-1 marginal of the forward process), one eps `[B, D]`;
        2. u_0 ~ p(u_0 | u_1) by K Langevin steps of the level-0 conditional (DESIGN §3) from u_1, the prior's sampler;
        3. the score is -G^{>k}(u_0, 0) / s_0^2, the level-0 energy of the top layers of u_0 (`top_neg_energy`).
        """
        top = 1 - layer_mask(self.backbone, k, u_q.device)  # [D], 1 on layers z_{k+1} .. z_L
        eps = torch.randn(u_q.shape, generator=generator, device=u_q.device)
        alpha_1, sigma_1 = float(self.schedule.alpha[1]), float(self.schedule.sigma[1])
        u1 = top * (alpha_1 * u_q + sigma_1 * eps) + (1 - top) * eps
        log_p = conditional_log_density(self.neg_energy_on_u, u1, self._levels(0, u1), self.schedule, self.step_sizes_sq)
        u0, _ = langevin(log_p, u1, self.n_steps, float(self.step_sizes_sq[0].sqrt()) * self.step_size, generator)
        with torch.no_grad():
            return -self.top_neg_energy(u0.detach(), k)

    def detection_scores(self, x: Tensor, ks: tuple[int, ...], generator: torch.Generator, draws: int = 1,
                         terms: tuple[str, ...] = SCORE_TERMS, posterior: PosteriorLangevin | None = None) -> dict[str, Tensor]:
        """`DiffEBM>k` `[B]` for each k (the mean over `draws` posterior draws) of images x `[B, C, H, W]`; `terms` does
        not apply (the diffusion prior has no marginal density for the likelihood scores L^{>k}). With `posterior`,
        the inferred u is refined by posterior Langevin under the Gaussian prior (`posterior_refiner`)."""
        with torch.no_grad():
            features = self.backbone.encode(x)
        totals = {k: torch.zeros(x.shape[0], device=x.device) for k in ks}
        refine = self.posterior_refiner(x, posterior)
        for _ in range(draws):
            u_q = posterior_u(self.backbone, features, generator)
            if refine is not None:
                u_q = refine(u_q, generator)
            for k in ks:
                totals[k] += self.diffebm_ood(u_q, k, generator)
        return {f"DiffEBM>{k}": total / draws for k, total in totals.items()}

    def describe(self, temperature: float, seed: int) -> dict:
        step_sizes = self.manifest_fields()["step_sizes"]
        return super().describe(temperature, seed) | {"step_scale": self.step_size, "schedule": self.schedule.to_dict(),
                                                      "step_sizes": [s * self.step_size for s in step_sizes]}

    def manifest_fields(self) -> dict:
        return {"schedule": self.schedule.to_dict(), "step_sizes": [float(s) for s in self.step_sizes_sq.sqrt()]}

    def _levels(self, level: int, like: Tensor) -> Tensor:
        return torch.full((like.shape[0],), level, dtype=torch.long, device=like.device)

    def trajectory(self, u_top: Tensor, generator: torch.Generator) -> Trajectory:
        """Rows u_T, ..., u_0; the long run continues the t = 0 chain given the chain's own u_1."""
        u0, _, levels = reverse_diffusion_sample(self.neg_energy_on_u, u_top, self.schedule, self.step_sizes_sq, self.n_steps, generator,
                                                 step_scale=self.step_size, return_trajectory=True)
        log_density = conditional_log_density(self.neg_energy_on_u, levels[-2], self._levels(0, u0), self.schedule, self.step_sizes_sq)
        step = float(self.step_sizes_sq[0].sqrt()) * self.step_size
        return Trajectory(levels, u0, log_density, lambda u: self.neg_energy_on_u(u, self._levels(0, u)), step)

    def training_outcome(self, u0: Tensor, generator: Noise, y: Tensor | None = None) -> TrainingOutcome:
        """t ~ U{0..T-1} per example, (u_t, u_{t+1}) forward from u_0, K Langevin steps of log p(u_t | u_{t+1}) from
        u_{t+1}; loss mean(-(G(pos, t) - G(neg, t)) / s_t^2) (Diff-EBM eq. 12-13, scaled parametrisation).
        With labels y `[B]` (Diff-EBM App. A.2): G is the marginal s_t^2 logsumexp_y G(z, y, t) / s_t^2 (F(z, null) on
        the rows label dropout picks at t = 0), and the loss adds the weighted cross-entropy of softmax_y G(z, y, 0) / s_0^2
        on the t = 0 positives: together -log p(u_0, y | u_1) at weight 1."""
        t = randint(self.config.T, (u0.shape[0],), generator, self.device)
        u_t, u_tp1 = forward_pairs(u0, t, self.schedule, generator)
        neg_energy, ce, records = self.label_terms(u_t, t, y, generator)
        log_p = conditional_log_density(neg_energy, u_tp1, t, self.schedule, self.step_sizes_sq)
        s_sq = self.step_sizes_sq[t]
        u_neg, stats = langevin(log_p, u_tp1, self.n_steps, s_sq.sqrt(), generator, runner=self.runner)
        pos, neg = neg_energy(u_t, t), neg_energy(u_neg, t)
        loss = diffusion_ebm_loss(pos, neg, s_sq)
        return TrainingOutcome(loss if ce is None else loss + ce, pos, neg, stats, scaled_gap(pos, neg, s_sq), records=records)


def scaled_gap(pos: Tensor, neg: Tensor, step_size_sq: Tensor) -> Tensor:
    """mean((G(pos, t) - G(neg, t)) / s_t^2) `[B]`, `[B]`, `[B]` -> `[]` (detached, on the device): the gap in the units
    of the diffusion loss (the loss is its negative), which the runaway guard compares; the raw G gap is ~s_t^2 times
    smaller."""
    return ((pos.detach() - neg.detach()) / step_size_sq).mean()
