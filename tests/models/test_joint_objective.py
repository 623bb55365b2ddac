"""The joint objective (Joint-EBM eq. 15-19) term by term against hand-built losses, and posterior Langevin."""

import math

import pytest
import torch

from hebmctl.data import load_split, to_unit_range
from hebmctl.models.backbone import Backbone
from hebmctl.models.energy import JointEnergy
from hebmctl.models.hvae import HierarchicalVAE
from hebmctl.models.joint_objective import inference_loss, inference_parameters, joint_loss
from hebmctl.models.vlae import VLAE
from hebmctl.samplers.posterior import posterior_log_density, sample_posterior

W = 0.7  # a KL warm-up weight != 1, so that a term missing its weight shows


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    """8 real MNIST digits `[8, 1, 28, 28]` in [-1, 1]."""
    return to_unit_range(load_split("builtin:mnist-10k", "test", (), 8).images)


def _models(family: str = "hvae") -> tuple[torch.nn.Module, JointEnergy]:
    torch.manual_seed(0)
    backbone = (HierarchicalVAE((28, 28, 1), (6, 4, 2), channels=8, mlp_hidden=16) if family == "hvae"
                else VLAE((28, 28, 1), (4, 4, 4), channels=8, mlp_hidden=16))
    energy = JointEnergy(group_shapes=backbone.group_shapes, width=16, depth=1)
    return backbone, energy


def _grads(loss: torch.Tensor, params: list[torch.nn.Parameter]) -> list[torch.Tensor]:
    grads = torch.autograd.grad(loss, params, allow_unused=True, retain_graph=True)
    return [torch.zeros_like(p) if g is None else g for g, p in zip(grads, params)]


def _close(a: list[torch.Tensor], b: list[torch.Tensor]) -> bool:
    return all(torch.allclose(x, y, atol=1e-5, rtol=1e-4) for x, y in zip(a, b, strict=True))


def _is_zero(grads: list[torch.Tensor]) -> bool:
    return all(float(g.abs().max()) == 0.0 for g in grads)


def _draws(backbone, images, seed: int = 1):
    """A reparametrised posterior draw (z `[B, D]`, kl `[B, L]`) and fixed negatives `[B, D]`."""
    z_q, kl = backbone.posterior(images, torch.Generator().manual_seed(seed))
    z_neg = backbone.sample_prior(len(images), torch.Generator().manual_seed(seed + 1))
    return z_q, kl, z_neg.detach()


def test_ebm_gradient_is_eq_17_positive_minus_negative_phase(images, single_thread):
    backbone, energy = _models()
    z_q, kl, z_neg = _draws(backbone, images)
    terms = joint_loss(backbone, energy, images, z_q, z_neg, kl, kl_weight=W)
    params = list(energy.parameters())
    hand = W * (energy(z_neg).mean() - energy(z_q.detach()).mean())  # eq. 17 with fixed samples
    assert _close(_grads(terms.total, params), _grads(hand, params))
    assert not _is_zero(_grads(hand, params))


def test_energy_l2_moves_the_ebm_only(images, single_thread):
    backbone, energy = _models()
    z_q, kl, z_neg = _draws(backbone, images)
    plain = joint_loss(backbone, energy, images, z_q, z_neg, kl, kl_weight=W)
    with_l2 = joint_loss(backbone, energy, images, z_q, z_neg, kl, kl_weight=W, energy_l2=0.3)
    backbone_params, energy_params = list(backbone.parameters()), list(energy.parameters())
    assert _close(_grads(with_l2.total, backbone_params), _grads(plain.total, backbone_params))
    hand = 0.3 * (energy(z_q.detach()).pow(2).mean() + energy(z_neg).pow(2).mean())
    extra = [a - b for a, b in zip(_grads(with_l2.total, energy_params), _grads(plain.total, energy_params))]
    assert _close(extra, _grads(hand, energy_params))


def test_generator_gradient_is_eq_16(images, single_thread):
    backbone, energy = _models()
    z_q, kl, z_neg = _draws(backbone, images)
    log_std = torch.tensor(-1.0)
    terms = joint_loss(backbone, energy, images, z_q, z_neg, kl, log_std, kl_weight=W)
    params = list(backbone.decoder.parameters())
    hand = backbone.recon_nll(images, backbone.decode_params(z_q.detach()), log_std).mean()  # -log p(x | z) at the draw
    assert _close(_grads(terms.total, params), _grads(hand, params))


def test_inference_gradient_is_eq_19_and_includes_the_ebm(images, single_thread):
    backbone, energy = _models()
    z_q, kl, z_neg = _draws(backbone, images)
    terms = joint_loss(backbone, energy, images, z_q, z_neg, kl, kl_weight=1.0)
    params = list(backbone.encoder.parameters()) + list(backbone.q_heads.parameters())
    elbo_only = backbone.recon_nll(images, backbone.decode_params(z_q)).mean() + kl.sum(-1).mean()
    hand = elbo_only - energy(z_q).mean()  # -[E_q log p(x|z) - KL(q || p_Gauss) + E_q F(z)]
    assert _close(_grads(terms.total, params), _grads(hand, params))
    assert not _close(_grads(terms.total, params), _grads(elbo_only, params))  # the E_q F(z) term is there
    assert _close(_grads(inference_loss(backbone, energy, images, z_q, kl), params), _grads(hand, params))


def test_negative_phase_moves_only_the_prior_nets_and_the_ebm(images, single_thread):
    backbone, energy = _models()
    z_q, kl, z_neg = _draws(backbone, images)
    terms = joint_loss(backbone, energy, images, z_q, z_neg, kl, kl_weight=W)
    others = list(backbone.encoder.parameters()) + list(backbone.q_heads.parameters()) + list(backbone.decoder.parameters())
    assert _is_zero(_grads(terms.negative_phase, others))
    prior_nets = list(backbone.prior_heads.parameters())
    hand = backbone.log_prior_gauss(z_neg).mean()  # eq. 18's negative phase: E_pEBM grad log p(z_i- | z_{>i}-)
    assert _close(_grads(terms.negative_phase, prior_nets), _grads(hand, prior_nets))
    assert not _is_zero(_grads(hand, prior_nets))


def test_eq_18_and_eq_17_vanish_when_negatives_equal_positives(images, single_thread):
    """MLE form (fixed posterior samples): the prior nets' and the EBM's gradients are positive minus negative phase."""
    backbone, energy = _models()
    z_q, _, z_neg = _draws(backbone, images)
    z_pos = z_q.detach()
    prior_nets, ebm = list(backbone.prior_heads.parameters()), list(energy.parameters())
    same = joint_loss(backbone, energy, images, z_pos, z_pos.clone(), None, kl_weight=W)
    assert float(max(g.abs().max() for g in _grads(same.total, prior_nets + ebm))) < 1e-5
    apart = joint_loss(backbone, energy, images, z_pos, z_neg, None, kl_weight=W)
    hand = W * (backbone.log_prior_gauss(z_neg).mean() - backbone.log_prior_gauss(z_pos).mean())
    assert _close(_grads(apart.total, prior_nets), _grads(hand, prior_nets))
    assert _is_zero(_grads(apart.total, list(backbone.encoder.parameters())))  # MLE: q learns by inference_loss only


def test_vlae_has_no_eq_18_parameters(single_thread, images):
    backbone, energy = _models("vlae")
    z_q, kl, z_neg = _draws(backbone, images)
    terms = joint_loss(backbone, energy, images, z_q, z_neg, kl, kl_weight=W)
    assert _is_zero(_grads(terms.negative_phase, list(backbone.parameters())))
    assert not _is_zero(_grads(terms.negative_phase, list(energy.parameters())))


def test_inference_parameters_are_the_encoder_and_q_heads(images, single_thread):
    backbone, _ = _models()
    expected = {id(p) for p in list(backbone.encoder.parameters()) + list(backbone.q_heads.parameters())}
    assert {id(p) for p in inference_parameters(backbone, images)} == expected


def test_posterior_log_density_is_the_u_space_density_with_the_jacobian(images, single_thread):
    """log p(u | x) + const = log p(x | T(u)) + F(T(u)) + log p_Gauss(T(u)) + log|det dT/du| (the Jacobian by autograd)."""
    backbone, energy = _models()
    x = images[:1]
    density = posterior_log_density(backbone, energy, x, torch.tensor(-1.0))
    values = []
    for seed in range(3):
        u = torch.randn((1, backbone.latent_dim), generator=torch.Generator().manual_seed(seed))
        z = backbone.u_to_z(u)
        jac = torch.autograd.functional.jacobian(lambda v: backbone.u_to_z(v[None])[0], u[0])
        by_hand = (-backbone.recon_nll(x, backbone.decode_params(z), torch.tensor(-1.0)) + energy(z) + backbone.log_prior_gauss(z)
                   + torch.linalg.slogdet(jac).logabsdet)
        values.append(float((density(u) - by_hand).detach()))
    assert values == pytest.approx([0.5 * backbone.latent_dim * math.log(2 * math.pi)] * 3, abs=1e-3)


class _LinearGaussianToy(Backbone):
    """p(z) = N(0, I) (T = identity), p(x | z) = N(A z, std^2 I) on a 2x2 image: the posterior is Gaussian, known in closed form."""

    image_shape, group_shapes = (2, 2, 1), ((2,),)

    def __init__(self, a: torch.Tensor) -> None:
        super().__init__()
        self.a = a  # [4, 2]

    def encode(self, x):
        return x

    def posterior_from_features(self, features, generator, sample=True):
        raise NotImplementedError

    def decode_params(self, z):
        return (z @ self.a.T).reshape(-1, 1, 2, 2)

    def u_to_z(self, u):
        return u

    def z_to_u(self, z):
        return z

    def log_prior_gauss(self, z):
        return -0.5 * z.pow(2).sum(-1) - math.log(2 * math.pi)


def test_posterior_langevin_reaches_the_closed_form_posterior_of_a_toy(single_thread):
    a = torch.tensor([[1.0, 0.5], [-0.5, 1.0], [0.3, 0.0], [0.0, 2.0]])
    toy, log_std = _LinearGaussianToy(a), torch.tensor(math.log(0.5))
    x = torch.tensor([0.8, -0.2, 0.1, 1.2]).reshape(1, 1, 2, 2).expand(4000, 1, 2, 2)
    precision = torch.eye(2) + a.T @ a / 0.25
    mean = torch.linalg.solve(precision, a.T @ x[0].flatten() / 0.25)  # [2]
    u_init = torch.randn((4000, 2), generator=torch.Generator().manual_seed(0))
    u_k, stats = sample_posterior(toy, None, x, u_init, 300, 0.1, torch.Generator().manual_seed(1), log_std)
    assert torch.allclose(u_k.mean(0), mean, atol=0.05)
    assert torch.allclose(torch.cov(u_k.T), torch.linalg.inv(precision), atol=0.02)
    assert float(stats.log_density[-1]) > float(stats.log_density[0]) + 5


def test_posterior_langevin_raises_the_target_log_density(images, single_thread):
    """On a tiny hvae with an EBM: the chain climbs (started far out, at 3 N(0, I)) and never touches a parameter's .grad."""
    backbone, energy = _models()
    u_init = 3 * torch.randn((len(images), backbone.latent_dim), generator=torch.Generator().manual_seed(3))
    log_std = torch.tensor(-1.0)
    density = posterior_log_density(backbone, energy, images, log_std)
    u_k, stats = sample_posterior(backbone, energy, images, u_init, 100, 0.2, torch.Generator().manual_seed(4), log_std)
    before, after = float(density(u_init).mean().detach()), float(density(u_k).mean().detach())
    assert after > before + 20
    assert stats.n_steps == 100 and stats.is_finite()
    assert all(p.grad is None for p in list(backbone.parameters()) + list(energy.parameters()))
