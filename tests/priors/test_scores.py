"""Detection scores with answers computed by hand (issue 12): every term of L^{>k} and Lprior^{>k} against
an independent formula (a flipped sign or a dropped term fails), and Diff-EBM's OOD score (sec. 5.2) uses
the level-1 forward kernel and the top layers only."""

from __future__ import annotations

import math

import torch
from torch import nn

from hebmctl.metrics.likelihood import layer_mask, likelihood_detection_scores
from hebmctl.models.hvae import HierarchicalVAE
from hebmctl.priors import SamplingOptions
from hebmctl.stages.artifacts import load_backbone, open_prior

CPU = torch.device("cpu")


def _model() -> HierarchicalVAE:
    torch.manual_seed(0)
    model = HierarchicalVAE((28, 28, 1), (6, 4, 2), channels=4, mlp_hidden=16)
    for p in model.parameters():  # non-trivial prior heads and decoder
        p.data.add_(0.3 * torch.randn_like(p))
    model.log_std_x.fill_(-1.0)
    return model.eval().requires_grad_(False)


def _by_hand(model: HierarchicalVAE, x: torch.Tensor, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(log p(x | z), log p_Gauss(z), F(z)) `[B]` each, for z = T(u), from formulas independent of the scorer:
    the Gaussian decoder density written out, log p_Gauss as the push-forward of N(0, I) through T (autograd
    Jacobian), and the toy energy F(z) = -0.5 * 3 |z|^2."""
    z = model.u_to_z(u)
    mean, std = model.decode(z), math.exp(-1.0)
    log_px = (-0.5 * ((x - mean) / std) ** 2 - math.log(std) - 0.5 * math.log(2 * math.pi)).flatten(1).sum(-1)
    jacobians = [torch.autograd.functional.jacobian(lambda v: model.u_to_z(v[None])[0], row) for row in u]
    log_det = torch.stack([torch.linalg.slogdet(j)[1] for j in jacobians])
    log_gauss = -0.5 * (u**2).sum(-1) - 0.5 * model.latent_dim * math.log(2 * math.pi) - log_det
    return log_px, log_gauss, -1.5 * (z**2).sum(-1)


def test_every_term_of_the_full_and_prior_scores_matches_the_hand_computation():
    model = _model()
    x = torch.rand(4, 1, 28, 28, generator=torch.Generator().manual_seed(1)) * 2 - 1
    drawn = {}

    def resample(u_fixed, mask, generator):  # a Gaussian redraw of z_1 .. z_k that records its input and output
        drawn["u_q"] = u_fixed
        drawn[int(mask.sum())] = u_fixed * (1 - mask) + torch.randn(u_fixed.shape, generator=generator) * mask
        return drawn[int(mask.sum())]

    energy = lambda z: -1.5 * (z**2).sum(-1)  # noqa: E731
    scores = likelihood_detection_scores(model, x, (0, 2), energy, resample, torch.Generator().manual_seed(3))
    assert set(scores) == {"-L>0", "-L>2", "LLR>2", "-Lprior>0", "-Lprior>2"}  # never an LLR of the prior's terms
    terms = {k: _by_hand(model, x, drawn["u_q"] if k == 0 else drawn[10]) for k in (0, 2)}  # layers 1-2 hold 6 + 4 dims
    for k, (log_px, log_gauss, neg_energy) in terms.items():
        torch.testing.assert_close(scores[f"-L>{k}"], -(log_px + log_gauss + neg_energy), rtol=1e-5, atol=1e-3)
        torch.testing.assert_close(scores[f"-Lprior>{k}"], -(log_gauss + neg_energy), rtol=1e-5, atol=1e-3)
        # the prior-terms score is the full score without log p(x | z), nothing else
        torch.testing.assert_close(scores[f"-Lprior>{k}"] - scores[f"-L>{k}"], log_px, rtol=1e-5, atol=1e-3)
    full = {k: sum(terms[k]) for k in terms}
    torch.testing.assert_close(scores["LLR>2"], full[0] - full[2], rtol=1e-5, atol=1e-3)  # eq. 21: L^{>0} - L^{>k}


def test_llr_vanishes_when_nothing_is_redrawn():
    """LLR^{>k} = L^{>0} - L^{>k} is 0 when the 'redraw' keeps the posterior draw (as LLR^{>0} always is)."""
    model = _model()
    x = torch.rand(3, 1, 28, 28, generator=torch.Generator().manual_seed(2)) * 2 - 1
    keep = lambda u, mask, generator: u  # noqa: E731
    scores = likelihood_detection_scores(model, x, (0, 1, 2), lambda z: z[:, 0], keep, torch.Generator().manual_seed(4))
    for k in (1, 2):
        assert torch.equal(scores[f"LLR>{k}"], torch.zeros(3)) and torch.equal(scores[f"-L>{k}"], scores["-L>0"])


class QuadraticEnergy(nn.Module):
    """f_i(z_i, t) = -a |z_i|^2 per group (a known level-0 energy), with the JointEnergy interface."""

    def __init__(self, group_dims: tuple[int, ...], a: float = 2.0) -> None:
        super().__init__()
        self.group_dims, self.a = group_dims, a

    def group_neg_energies(self, z, t=None):
        return [-self.a * (g**2).sum(-1) for g in torch.split(z, list(self.group_dims), dim=1)]

    def forward(self, z, t=None):
        return torch.stack(self.group_neg_energies(z, t)).sum(0)


def _diffusion(tiny_backbone, tiny_priors, steps: int):
    backbone = load_backbone(tiny_backbone, CPU)
    prior, _ = open_prior(tiny_priors["diffusion"], backbone, CPU, SamplingOptions(langevin_steps=steps))
    return backbone.model, prior


def test_diffebm_perturbs_to_level_one_and_scores_the_top_layers(tiny_backbone, tiny_priors):
    model, prior = _diffusion(tiny_backbone, tiny_priors, steps=0)  # K = 0: u_0 is the level-1 start itself
    prior.energy = QuadraticEnergy(model.group_dims)
    u_q = torch.randn(5, model.latent_dim, generator=torch.Generator().manual_seed(0))
    k = 1
    score = prior.diffebm_ood(u_q, k, torch.Generator().manual_seed(7))
    eps = torch.randn(u_q.shape, generator=torch.Generator().manual_seed(7))
    top = 1 - layer_mask(model, k, CPU)
    alpha_1, sigma_1 = float(prior.schedule.alpha[1]), float(prior.schedule.sigma[1])
    u1 = top * (alpha_1 * u_q + sigma_1 * eps) + (1 - top) * eps  # level 1 (not level 0, 2 or the cumulative kernel)
    z_top = model.u_to_z(u1)[:, layer_mask(model, k, CPU) == 0]  # layers z_2 .. z_L only
    expected = 2.0 * (z_top**2).sum(-1) / float(prior.step_sizes_sq[0])  # -G^{>k}(u_0, 0) / s_0^2, higher = more OOD
    torch.testing.assert_close(score, expected, rtol=1e-5, atol=1e-4)


def test_diffebm_ignores_the_inferred_lower_layers_and_ranks_by_the_known_energy(tiny_backbone, tiny_priors):
    model, prior = _diffusion(tiny_backbone, tiny_priors, steps=5)
    prior.energy = QuadraticEnergy(model.group_dims, a=0.5 * float(prior.step_sizes_sq[0]))  # G / s_0^2 = -0.5 |z|^2: a stable chain
    u_q = torch.randn(6, model.latent_dim, generator=torch.Generator().manual_seed(1))
    k, bottom = 1, layer_mask(model, 1, CPU)
    other = u_q + 5.0 * bottom * torch.randn(u_q.shape, generator=torch.Generator().manual_seed(2))  # new u_{<=k}
    a = prior.diffebm_ood(u_q, k, torch.Generator().manual_seed(3))
    assert torch.equal(a, prior.diffebm_ood(other, k, torch.Generator().manual_seed(3)))  # u_{<=k} never enters
    assert not torch.allclose(a, prior.diffebm_ood(u_q * 2, k, torch.Generator().manual_seed(3)))  # u_{>k} does
    # with f = -a |z|^2 the codes far from 0 have the higher energy, so they are the more OOD ones (a flipped sign fails)
    far, near = (prior.diffebm_ood(u_q * scale, k, torch.Generator().manual_seed(3)) for scale in (10.0, 0.0))
    assert (far > near).all()


def test_posterior_langevin_refines_the_draw_that_every_score_uses():
    """--posterior-langevin-steps K: the scored u is K posterior Langevin steps from q's draw (Joint-EBM sec. 3.2),
    on log p(x | T(u)) + F(T(u)) - |u|^2/2 with this prior's F, the same draw for every k and term set."""
    from hebmctl.metrics.likelihood import posterior_u
    from hebmctl.priors import PosteriorLangevin
    from hebmctl.samplers.posterior import sample_posterior

    model = _model()
    x = torch.rand(4, 1, 28, 28, generator=torch.Generator().manual_seed(1)) * 2 - 1
    energy = lambda z: -1.5 * (z**2).sum(-1)  # noqa: E731
    seen = {}

    def resample(u_fixed, mask, generator):
        seen["u"] = u_fixed
        return u_fixed

    def refine(u_q, generator):
        return sample_posterior(model, energy, x, u_q, 3, 0.005, generator)[0]

    scores = likelihood_detection_scores(model, x, (0, 1), energy, resample, torch.Generator().manual_seed(3), refine=refine)
    generator = torch.Generator().manual_seed(3)
    u_q = posterior_u(model, model.encode(x), generator)
    u = sample_posterior(model, energy, x, u_q, 3, 0.005, generator)[0]
    assert torch.isfinite(u).all() and not torch.allclose(u, u_q, atol=1e-3)  # the chain moved
    torch.testing.assert_close(seen["u"], u)  # the refined draw is what the conditional redraw starts from
    log_px, log_gauss, neg_energy = _by_hand(model, x, u)
    torch.testing.assert_close(scores["-L>0"], -(log_px + log_gauss + neg_energy), rtol=1e-5, atol=1e-3)
    assert PosteriorLangevin(3, 0.1).n_steps == 3


def test_eval_ood_with_posterior_langevin_changes_scores_and_fingerprint(tiny_backbone, tiny_priors, tmp_path):
    from safetensors.torch import load_file

    from hebmctl.schemas import EvalOodConfig
    from hebmctl.stages import eval_ood

    from tests.conftest import shared_data

    common = dict(backbone=tiny_backbone, prior=str(tiny_priors["joint"]), ood=f"fashion-mnist:{shared_data('fashion-mnist')}", limit=16,
                  k=(0,), device="cpu", batch_size=16)
    plain = eval_ood.run(EvalOodConfig(**common, out=tmp_path / "plain"))
    refined = eval_ood.run(EvalOodConfig(**common, posterior_langevin_steps=5, out=tmp_path / "refined"))
    assert plain.fingerprint != refined.fingerprint and refined.config.posterior_langevin_steps == 5
    a, b = load_file(str(tmp_path / "plain" / "scores.safetensors")), load_file(str(tmp_path / "refined" / "scores.safetensors"))
    assert set(a) == set(b) and all(torch.isfinite(b[name]).all() and not torch.allclose(a[name], b[name]) for name in a)
