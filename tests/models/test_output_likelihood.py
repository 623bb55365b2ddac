"""Output likelihoods p(x | z) (hebmctl.models.likelihood): probabilities of the 256 bins sum to 1, the mixture matches
PixelCNN++'s formula by hand, the Gaussian's discrete scale agrees with the density-times-bin-width conversion away from
the edges, and every family builds, trains and decodes images with the mixture."""

from __future__ import annotations

import math

import pytest
import torch

from hebmctl.models.hvae import HierarchicalVAE
from hebmctl.models.likelihood import BIN_WIDTH, GaussianLikelihood, LogisticMixtureLikelihood, make_likelihood
from hebmctl.models.nvae import NVAE
from hebmctl.models.vlae import VLAE

LEVELS = torch.arange(256, dtype=torch.float32) / 127.5 - 1  # the 8-bit values on [-1, 1]


def _mixture_params(channels: int, components: int, seed: int = 0) -> torch.Tensor:
    """[2, C * 3K, 2, 3] parameters with locations inside and beyond [-1, 1] and log scales from -6 to 1."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(2, channels, 1, components, 2, 3, generator=g)
    mu = 1.6 * torch.rand(2, channels, 1, components, 2, 3, generator=g) * 2 - 1.6
    log_s = torch.rand(2, channels, 1, components, 2, 3, generator=g) * 7 - 6
    return torch.cat([logits, mu, log_s], dim=2).reshape(2, channels * 3 * components, 2, 3)


@pytest.mark.parametrize("channels", [1, 3])
def test_mixture_probabilities_of_the_256_bins_sum_to_one(channels):
    lik = LogisticMixtureLikelihood(4)
    params = _mixture_params(channels, 4)
    probs = torch.stack([lik.log_prob_per_pixel(v.expand(2, channels, 2, 3), params).exp() for v in LEVELS])
    torch.testing.assert_close(probs.sum(0), torch.ones(2, channels, 2, 3), atol=2e-4, rtol=0)


def test_mixture_with_one_component_is_the_logistic_mass_of_the_bin():
    lik = LogisticMixtureLikelihood(1)
    mu, log_s = 0.1, math.log(0.05)
    params = torch.tensor([0.0, mu, log_s]).view(1, 3, 1, 1)
    for value in (LEVELS[100], LEVELS[0], LEVELS[255]):
        x = value.view(1, 1, 1, 1)
        cdf = lambda t: 1 / (1 + math.exp(-(t - mu) / math.exp(log_s)))  # noqa: E731
        upper = 1.0 if value > 0.99 else cdf(float(value) + BIN_WIDTH / 2)
        lower = 0.0 if value < -0.99 else cdf(float(value) - BIN_WIDTH / 2)
        assert float(-lik.nll(x, params, torch.tensor(0.0))) == pytest.approx(math.log(upper - lower), rel=1e-4)


def test_mixture_mean_is_the_weighted_clamped_location():
    lik = LogisticMixtureLikelihood(2)
    params = torch.tensor([0.0, math.log(3.0), 0.5, -1.4, -3.0, -3.0]).view(1, 6, 1, 1)  # pi = (1/4, 3/4), mu = (0.5, -1.4)
    assert float(lik.mean(params)) == pytest.approx(0.25 * 0.5 + 0.75 * -1.0)


def test_gaussian_discrete_masses_sum_to_one_and_match_the_density_conversion_inside():
    lik, log_std = GaussianLikelihood(), torch.tensor(math.log(0.1))
    mu = torch.tensor([[-0.95, 0.2, 1.3]]).view(1, 1, 1, 3)
    masses = torch.stack([(-lik.discrete_nll(v.expand(1, 1, 1, 1), mu[..., i : i + 1], log_std)).exp() for v in LEVELS for i in range(3)])
    torch.testing.assert_close(masses.view(256, 3).sum(0), torch.ones(3), atol=1e-5, rtol=0)
    x = torch.full((1, 1, 1, 1), float(LEVELS[150]))  # far from the edges: -log P ~ -log p(x) - log w
    density = lik.nll(x, mu[..., 1:2], log_std)
    assert float(lik.discrete_nll(x, mu[..., 1:2], log_std)) == pytest.approx(float(density) - math.log(BIN_WIDTH), abs=1e-3)


@pytest.mark.parametrize("family", ["nvae", "hvae", "vlae"])
def test_every_family_trains_and_decodes_images_with_the_mixture(family):
    torch.manual_seed(0)
    lik = make_likelihood("logistic-mixture", 3)
    model = {
        "nvae": lambda: NVAE((8, 8, 3), (1, 1), group_channels=1, channels=8, likelihood=lik),
        "hvae": lambda: HierarchicalVAE((8, 8, 3), (4, 2), channels=4, mlp_hidden=16, likelihood=lik),
        "vlae": lambda: VLAE((8, 8, 3), (4, 2), channels=4, mlp_hidden=16, likelihood=lik),
    }[family]()
    x = torch.randint(0, 256, (4, 3, 8, 8)).float() / 127.5 - 1
    terms = model.elbo_terms(x, torch.Generator().manual_seed(0), calibrate=True)
    assert terms.params.shape == (4, 27, 8, 8) and terms.x_mean.shape == (4, 3, 8, 8)
    assert torch.isfinite(terms.recon_nll).all() and float(terms.recon_nll.detach().min()) > 0  # a probability of a bin: -log P > 0
    (terms.recon_nll.mean() + terms.kl.sum(-1).mean()).backward()
    z, _ = model.posterior(x, None, sample=False)
    image = model.decode(z)
    assert image.shape == (4, 3, 8, 8) and float(image.detach().abs().max()) <= 1.0
    torch.testing.assert_close(model.recon_nll(x, model.decode_params(z)), model.discrete_nll(x, model.decode_params(z)))


def test_likelihoods_and_kl_compute_in_float32_on_bfloat16_decoder_outputs():
    """What --precision bf16 hands over from its autocast region: bfloat16 parameters, float32 results."""
    from hebmctl.models.backbone import gaussian_kl

    x = LEVELS[::64].view(1, 1, 2, 2)
    cases = ((LogisticMixtureLikelihood(4), _mixture_params(1, 4)[:1, :, :, :2]), (GaussianLikelihood(), torch.zeros(1, 1, 2, 2)))
    for lik, params in cases:
        value = lik.nll(x, params.bfloat16(), torch.tensor(-1.0))
        assert value.dtype == torch.float32
        torch.testing.assert_close(value, lik.nll(x, params.bfloat16().float(), torch.tensor(-1.0)))
    half = torch.ones(1, 3, dtype=torch.bfloat16)
    assert gaussian_kl(half, half, 0 * half, half).dtype == torch.float32
