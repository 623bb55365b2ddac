import pytest
import torch

from hebmctl.models.hvae import HierarchicalVAE, gaussian_kl, gaussian_log_prob


@pytest.mark.parametrize("inference", ["top-down", "bottom-up"])
@pytest.mark.parametrize("image_shape", [(28, 28, 1), (32, 32, 3)])
def test_shapes(inference, image_shape):
    torch.manual_seed(0)
    model = HierarchicalVAE(image_shape, (6, 4, 2), channels=8, mlp_hidden=16, inference=inference)
    h, w, c = image_shape
    x = torch.rand(5, c, h, w) * 2 - 1
    terms = model.elbo_terms(x, torch.Generator().manual_seed(0))
    assert terms.recon_nll.shape == (5,) and terms.kl.shape == (5, 3)
    assert terms.x_mean.shape == x.shape
    assert model.decode(model.sample_prior(3, torch.Generator().manual_seed(1))).shape == (3, c, h, w)


@pytest.mark.parametrize("inference", ["top-down", "bottom-up"])
def test_u_space_round_trip_is_exact_in_float32(inference):
    """DESIGN §3: T must be exactly invertible in float32 (here to 1e-5), both ways."""
    torch.manual_seed(0)
    model = HierarchicalVAE((28, 28, 1), (16, 8, 4), channels=8, mlp_hidden=32, inference=inference)
    # Make the conditional prior non-trivial so that the test exercises mu and sigma.
    with torch.no_grad():
        for p in model.prior_heads.parameters():
            p.add_(0.1 * torch.randn_like(p))
    u = torch.randn(256, model.latent_dim)
    z = model.u_to_z(u)
    assert not torch.allclose(z, u)
    assert (model.z_to_u(z) - u).abs().max() < 1e-5
    z2 = model.sample_prior(64, torch.Generator().manual_seed(3))
    assert (model.u_to_z(model.z_to_u(z2)) - z2).abs().max() < 1e-5


def test_top_layer_is_identity_in_u_space():
    model = HierarchicalVAE((28, 28, 1), (6, 4, 2), channels=8, mlp_hidden=16)
    u = torch.randn(10, 12)
    assert torch.equal(model.split_groups(model.u_to_z(u))[-1], model.split_groups(u)[-1])


def test_gaussian_kl_matches_monte_carlo():
    g = torch.Generator().manual_seed(0)
    mu_q, std_q = torch.tensor([[0.5, -1.0]]), torch.tensor([[0.7, 1.3]])
    mu_p, std_p = torch.tensor([[0.0, 0.2]]), torch.tensor([[1.0, 0.8]])
    z = mu_q + std_q * torch.randn(200_000, 2, generator=g)
    mc = (gaussian_log_prob(z, mu_q, std_q) - gaussian_log_prob(z, mu_p, std_p)).mean()
    assert float(gaussian_kl(mu_q, std_q, mu_p, std_p)) == pytest.approx(float(mc), abs=0.02)


def test_posterior_sampling_is_reproducible_with_generator():
    model = HierarchicalVAE((28, 28, 1), (6, 4, 2), channels=8, mlp_hidden=16)
    x = torch.rand(4, 1, 28, 28) * 2 - 1
    z1, _ = model.posterior(x, torch.Generator().manual_seed(5))
    z2, _ = model.posterior(x, torch.Generator().manual_seed(5))
    z3, _ = model.posterior(x, torch.Generator().manual_seed(6))
    assert torch.equal(z1, z2) and not torch.equal(z1, z3)


def test_round_trip_on_a_trained_backbone(tiny_backbone):
    from hebmctl.stages.artifacts import load_backbone

    model = load_backbone(tiny_backbone, torch.device("cpu")).model
    u = torch.randn(512, model.latent_dim, generator=torch.Generator().manual_seed(0))
    assert (model.z_to_u(model.u_to_z(u)) - u).abs().max() < 1e-5
