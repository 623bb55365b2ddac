"""Every backbone family behind the one interface: shapes, T round trip, log p_Gauss, misfits."""

from __future__ import annotations

import math

import pytest
import torch

from hebmctl.models.backbone import BackboneMisfit, gaussian_log_prob
from hebmctl.models.hvae import HierarchicalVAE
from hebmctl.models.nvae import NVAE
from hebmctl.models.vlae import VLAE


def _perturb(model: torch.nn.Module, scale: float = 0.1) -> None:
    """Random weights away from initialisation, so mu and sigma of the prior are non-trivial."""
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn(p.shape, generator=gen))


FAMILIES = {
    "hvae": lambda shape: HierarchicalVAE(shape, (6, 4, 2), channels=8, mlp_hidden=16),
    "nvae": lambda shape: NVAE(shape, (1, 2), group_channels=2, channels=8),
    "nvae-3-scales": lambda shape: NVAE(shape, (1, 1, 1), group_channels=2, channels=8),
    "vlae": lambda shape: VLAE(shape, (6, 4, 2), channels=8, mlp_hidden=16),
    "vlae-4-layers": lambda shape: VLAE(shape, (5, 4, 3, 2), channels=8, mlp_hidden=16),
    "vlae-2-layers": lambda shape: VLAE(shape, (4, 2), channels=8, mlp_hidden=16),
}


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("image_shape", [(28, 28, 1), (32, 32, 3)])
def test_interface_shapes(family, image_shape, single_thread):
    if family == "nvae-3-scales" and image_shape[0] == 28:
        pytest.skip("28 is not divisible by 8 (see test_misfits_are_refused)")
    torch.manual_seed(0)
    model = FAMILIES[family](image_shape)
    h, w, c = image_shape
    x = torch.rand(3, c, h, w) * 2 - 1
    terms = model.elbo_terms(x, torch.Generator().manual_seed(0), calibrate=True)
    assert terms.recon_nll.shape == (3,) and terms.kl.shape == (3, model.num_layers) and terms.x_mean.shape == x.shape
    assert (terms.kl >= -1e-4).all()  # closed-form KLs are non-negative
    z, kl = model.posterior(x, torch.Generator().manual_seed(0))
    assert z.shape == (3, model.latent_dim) == (3, sum(math.prod(s) for s in model.group_shapes))
    assert model.decode(z).shape == x.shape
    assert model.log_prior_gauss(z).shape == (3,)
    assert [g.shape[1:] for g in model.group_maps(z)] == [torch.Size(s) for s in model.group_shapes]
    features = model.repeat_features(model.encode(x), 2)
    z2, _ = model.posterior_from_features(features, None, sample=False)
    z_mean, _ = model.posterior(x, None, sample=False)
    assert torch.allclose(z2[::2], z_mean, atol=1e-5) and torch.allclose(z2[1::2], z_mean, atol=1e-5)


def test_nvae_groups_are_spatial_and_ordered_bottom_to_top():
    model = NVAE((28, 28, 1), (1, 2), group_channels=3, channels=8)
    assert model.group_shapes == ((3, 14, 14), (3, 14, 14), (3, 7, 7))  # bottom (high resolution) first


@pytest.mark.parametrize("family", FAMILIES)
def test_u_space_round_trip_is_exact_in_float32(family, single_thread):
    """DESIGN §3: T must be exactly invertible in float32 (here to 1e-5), both ways."""
    shape = (32, 32, 3)
    torch.manual_seed(0)
    model = FAMILIES[family](shape)
    _perturb(model)
    u = torch.randn(64, model.latent_dim, generator=torch.Generator().manual_seed(2))
    z = model.u_to_z(u)
    assert (model.z_to_u(z) - u).abs().max() < 1e-5
    z2 = model.sample_prior(16, torch.Generator().manual_seed(3))
    assert (model.u_to_z(model.z_to_u(z2)) - z2).abs().max() < 1e-5
    if family.startswith("vlae"):
        assert torch.equal(z, u)  # independent N(0, I) groups: T is the identity
    else:
        assert not torch.allclose(z, u)


def test_nvae_t_is_triangular_top_down(single_thread):
    """z_i depends on u_i .. u_L only: changing the bottom group's u leaves every group above unchanged."""
    torch.manual_seed(0)
    model = NVAE((28, 28, 1), (1, 2), group_channels=2, channels=8)
    _perturb(model)
    u = torch.randn(4, model.latent_dim)
    u2 = u.clone()
    bottom = model.group_dims[0]
    u2[:, :bottom] += 1.0
    z, z2 = model.split_groups(model.u_to_z(u)), model.split_groups(model.u_to_z(u2))
    assert not torch.allclose(z[0], z2[0])
    assert all(torch.equal(a, b) for a, b in zip(z[1:], z2[1:]))


@pytest.mark.parametrize("family", ["hvae", "nvae"])
def test_log_prior_gauss_matches_change_of_variables_with_slogdet(family):
    """log p_Gauss(z) = log N(T^{-1}(z); 0, I) - log|det dT/du|, the Jacobian by autograd and slogdet."""
    torch.manual_seed(0)
    model = {"hvae": lambda: HierarchicalVAE((8, 8, 1), (3, 2, 2), channels=4, mlp_hidden=8),
             "nvae": lambda: NVAE((8, 8, 1), (1, 1), group_channels=1, channels=4)}[family]().double()
    _perturb(model, 0.3)
    u = torch.randn(3, model.latent_dim, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    z = model.u_to_z(u)
    for row in range(u.shape[0]):
        jac = torch.autograd.functional.jacobian(lambda v: model.u_to_z(v[None])[0], u[row])
        _, logdet = torch.linalg.slogdet(jac)
        expected = gaussian_log_prob(u[row : row + 1], torch.zeros_like(u[:1]), torch.ones_like(u[:1])) - logdet
        assert float(model.log_prior_gauss(z[row : row + 1]).detach()) == pytest.approx(float(expected.detach()), abs=1e-8)


def test_vlae_log_prior_is_standard_normal():
    model = VLAE((28, 28, 1), (4, 2), channels=8, mlp_hidden=16)
    z = torch.randn(5, 6)
    expected = -0.5 * (z**2).sum(1) - 3 * math.log(2 * math.pi)
    assert torch.allclose(model.log_prior_gauss(z), expected, atol=1e-5)


def test_vlae_injects_every_group_and_the_top_group_first():
    """Every group changes the image; the generator reads the top group through the deepest path."""
    torch.manual_seed(0)
    model = VLAE((28, 28, 1), (4, 3, 2), channels=8, mlp_hidden=16)
    _perturb(model)
    z = torch.randn(2, model.latent_dim)
    base = model.decode(z)
    for i in range(model.num_layers):
        bumped = torch.cat([g + (1.0 if j == i else 0.0) for j, g in enumerate(model.split_groups(z))], dim=1)
        assert not torch.allclose(model.decode(bumped), base), f"group {i} does not reach the pixels"
    assert model.gen_top[0].in_features == 2  # the top group (z_3, size 2) starts the generator


@pytest.mark.parametrize(
    "build, message",
    [
        (lambda: NVAE((28, 28, 1), (1, 1, 1)), "divisible by 8"),
        (lambda: NVAE((4, 4, 1), (1, 1)), "at least 2 pixels"),
        (lambda: NVAE((28, 28, 1), ()), "at least one scale"),
        (lambda: HierarchicalVAE((30, 30, 1), (4, 2)), "divisible by 4"),
        (lambda: VLAE((1, 1, 1), (4, 2)), "divisible by 4"),
    ],
)
def test_misfits_are_refused(build, message):
    with pytest.raises(BackboneMisfit, match=message):
        build()
