"""L^{>k} scores: the Gaussian log-density in z equals the u-space density with T's Jacobian, and
the masked redraws touch exactly layers 1..k."""

from __future__ import annotations

import math

import torch

from hebmctl.metrics.likelihood import layer_mask, layer_scores, log_gaussian_prior, log_joint
from hebmctl.models.hvae import HierarchicalVAE


def _model() -> HierarchicalVAE:
    torch.manual_seed(0)
    model = HierarchicalVAE((28, 28, 1), (6, 4, 2), channels=4, mlp_hidden=16)
    for p in model.parameters():  # non-trivial prior heads
        p.data.add_(0.3 * torch.randn_like(p))
    return model.eval().requires_grad_(False)


def _log_abs_det_T(model: HierarchicalVAE, u: torch.Tensor) -> torch.Tensor:
    """log |det dT/du| by autograd, one example at a time (the independent check)."""
    return torch.stack([torch.linalg.slogdet(torch.autograd.functional.jacobian(lambda v: model.u_to_z(v[None])[0], row))[1] for row in u])


def test_log_gaussian_prior_is_the_pushforward_of_n01():
    model = _model()
    u = torch.randn(5, model.latent_dim, generator=torch.Generator().manual_seed(1))
    z = model.u_to_z(u)
    log_n01 = -0.5 * (u**2).sum(-1) - 0.5 * model.latent_dim * math.log(2 * math.pi)
    torch.testing.assert_close(log_gaussian_prior(model, z), log_n01 - _log_abs_det_T(model, u), rtol=1e-4, atol=1e-4)


def test_layer_mask_selects_the_bottom_k_layers():
    model = _model()
    assert layer_mask(model, 0, torch.device("cpu")).sum() == 0
    assert layer_mask(model, 2, torch.device("cpu")).tolist() == [1.0] * 10 + [0.0] * 2


def test_scores_use_the_posterior_at_k0_and_redraw_only_masked_layers():
    model = _model()
    x = torch.rand(4, 1, 28, 28) * 2 - 1
    seen = {}

    def resample(u_fixed, mask, generator):
        seen["u_fixed"], seen["mask"] = u_fixed, mask
        return u_fixed * (1 - mask) + torch.randn(u_fixed.shape, generator=generator) * mask

    scores = layer_scores(model, x, (0, 2), None, resample, torch.Generator().manual_seed(3))
    # k = 0 is log_joint at the same posterior draw the resampler was given.
    z_q = model.u_to_z(seen["u_fixed"])
    torch.testing.assert_close(scores[0], log_joint(model, x, z_q, None))
    assert seen["mask"].tolist() == [1.0] * 10 + [0.0] * 2
    # The EBM term adds F(z) exactly.
    with_energy = layer_scores(model, x, (0,), lambda z: z.sum(-1), resample, torch.Generator().manual_seed(3))
    torch.testing.assert_close(with_energy[0], scores[0] + z_q.sum(-1))


def test_scores_are_deterministic_and_average_draws():
    model = _model()
    x = torch.rand(3, 1, 28, 28) * 2 - 1
    redraw = lambda u, m, g: u * (1 - m) + torch.randn(u.shape, generator=g) * m  # noqa: E731
    a = layer_scores(model, x, (0, 1), None, redraw, torch.Generator().manual_seed(5), draws=3)
    b = layer_scores(model, x, (0, 1), None, redraw, torch.Generator().manual_seed(5), draws=3)
    assert all(torch.equal(a[k], b[k]) for k in a)
    # draws=3 is the mean of three single draws taken one after another from the same generator
    # (a sum, the last draw only, or one posterior sample reused would each differ).
    generator = torch.Generator().manual_seed(5)
    singles = [layer_scores(model, x, (0, 1), None, redraw, generator, draws=1) for _ in range(3)]
    for k in (0, 1):
        draws = torch.stack([s[k] for s in singles])
        assert not torch.allclose(draws[0], draws[1])
        torch.testing.assert_close(a[k], draws.mean(0), rtol=1e-6, atol=1e-4)


def test_latent_terms_drop_only_the_pixel_likelihood():
    model = _model()
    x = torch.rand(3, 1, 28, 28) * 2 - 1
    z = model.u_to_z(torch.randn(3, model.latent_dim, generator=torch.Generator().manual_seed(2)))
    energy = lambda z: z[:, 0]  # noqa: E731
    full, latent = log_joint(model, x, z, energy, "full"), log_joint(model, x, z, energy, "latent")
    torch.testing.assert_close(full - latent, -model.recon_nll(x, model.decode_params(z)))
    torch.testing.assert_close(latent, log_gaussian_prior(model, z) + z[:, 0])
