"""Each prior class on the 2-D toy with a known density; masked sampling; the factory on real artifacts."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from hebmctl import priors
from hebmctl.schemas import TrainPriorConfig
from hebmctl.stages.artifacts import load_backbone, load_prior, open_prior

from tests.priors.toy import IdentityBackbone, mixture, mmd_rbf

pytestmark = pytest.mark.usefixtures("single_thread")
CPU = torch.device("cpu")

TOY_SETTINGS = {
    # Joint: the anchor s = 0.4 is too steep for modes of std 0.15 (tests/samplers/test_diffusion.py); s = 0.15, K = 40.
    "joint": dict(scheme="joint", langevin_steps=40, step_size=0.15, width=64),
    # Diffusion: anchor step rule with b2 = 1e-3 (at 3e-5 the toy's samples collapse onto the mode centres).
    "diffusion": dict(scheme="diffusion", langevin_steps=20, b2=1e-3, width=64, time_embed_dim=32),
}


def train_toy(scheme: str, steps: int = 250) -> priors.EnergyPrior:
    """A prior of the scheme trained on the toy by its own training step (as train-prior does, without the trainer)."""
    config = TrainPriorConfig(**TOY_SETTINGS[scheme], seed=0)
    prior = priors.for_training(config, IdentityBackbone(), CPU)
    opt = torch.optim.Adam(prior.energy.parameters(), lr=1e-3, betas=(0.5, 0.999))
    g = torch.Generator().manual_seed(1)
    for _ in range(steps):
        outcome = prior.training_outcome(mixture(256, g), g)
        opt.zero_grad()
        outcome.loss.backward()
        opt.step()
        assert torch.isfinite(outcome.loss) and outcome.stats.is_finite()
    return prior


@pytest.fixture(scope="module")
def toy_priors() -> dict[str, priors.Prior]:
    # Module fixtures run before the function-scoped single_thread: one thread here too (2 threads on tiny tensors
    # made this training 10-15x slower on the shared cores, tests/conftest.py).
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return {"gaussian": priors.gaussian(IdentityBackbone(), CPU), "joint": train_toy("joint"), "diffusion": train_toy("diffusion")}
    finally:
        torch.set_num_threads(old)


@pytest.mark.parametrize("scheme", ["joint", "diffusion"])
def test_trained_prior_is_closer_to_the_target_than_the_gaussian(toy_priors, scheme):
    g = torch.Generator().manual_seed(5)
    target, base = mixture(1000, g), torch.randn(1000, 2, generator=g)
    u, stats = toy_priors[scheme].draw(1000, g)
    assert torch.isfinite(u).all() and all(s.is_finite() for s in stats)
    assert mmd_rbf(u, target) < 0.5 * mmd_rbf(base, target), (mmd_rbf(u, target), mmd_rbf(base, target))
    assert abs(u.norm(dim=1).median().item() - 2.0) < 0.2  # on the circle of modes


def test_gaussian_prior_draws_its_known_density(toy_priors):
    g = torch.Generator().manual_seed(5)
    u, stats = toy_priors["gaussian"].draw(4000, g)
    reference = torch.randn(1000, 2, generator=g)
    assert stats == [] and mmd_rbf(u[:1000], reference) < 0.02 < mmd_rbf(u[:1000], mixture(1000, g))
    assert torch.allclose(u.mean(0), torch.zeros(2), atol=0.05) and torch.allclose(u.var(0), torch.ones(2), atol=0.07)


@pytest.mark.parametrize("scheme", ["gaussian", "joint", "diffusion"])
def test_masked_sampling_keeps_the_fixed_coordinates_exactly(toy_priors, scheme):
    u_fixed = mixture(64, torch.Generator().manual_seed(2))
    mask = torch.tensor([0.0, 1.0])
    u = toy_priors[scheme].resample_masked(u_fixed, mask, torch.Generator().manual_seed(3))
    assert torch.equal(u[:, 0], u_fixed[:, 0])
    assert not torch.allclose(u[:, 1], u_fixed[:, 1]) and torch.isfinite(u).all()


class CoupledEnergy(nn.Module):
    """F(u) = -c (u_1 - u_0)^2 / 2 (set by hand): with the N(0, I) term, u_1 | u_0 ~ N(c u_0 / (1 + c), 1 / (1 + c))."""

    def __init__(self, c: float) -> None:
        super().__init__()
        self.c = c

    def forward(self, z, t=None):
        return -0.5 * self.c * (z[:, 1] - z[:, 0]) ** 2


def test_joint_masked_sampling_draws_the_known_conditional():
    c = 3.0
    config = TrainPriorConfig(scheme="joint", langevin_steps=200)
    prior = priors.from_energy(config, CoupledEnergy(c), IdentityBackbone(), CPU, priors.SamplingOptions(step_size=0.15))
    u0 = torch.linspace(-2, 2, 8).repeat_interleave(500)
    u = prior.resample_masked(torch.stack([u0, torch.zeros_like(u0)], 1), torch.tensor([0.0, 1.0]), torch.Generator().manual_seed(0))
    residual = u[:, 1] - c / (1 + c) * u0
    slope = float((u[:, 1] * u0).sum() / (u0 * u0).sum())
    # ULA's stationary variance at step h is 1 / (P (1 - h^2 P / 4)), P = 1 + c: 2.3 % above 1 / P at h = 0.15.
    assert slope == pytest.approx(c / (1 + c), abs=0.02)
    assert float(residual.var()) == pytest.approx(1 / (1 + c) / (1 - 0.15**2 * (1 + c) / 4), rel=0.08)


def test_factory_rebuilds_each_kind_from_a_train_prior_artifact(tiny_backbone, tiny_priors):
    backbone = load_backbone(tiny_backbone, CPU)
    gaussian, inputs = open_prior(None, backbone, CPU)
    assert isinstance(gaussian, priors.GaussianPrior) and inputs == []
    for scheme, cls in (("joint", priors.JointPrior), ("diffusion", priors.DiffusionPrior)):
        prior, inputs = open_prior(tiny_priors[scheme], backbone, CPU, priors.SamplingOptions(langevin_steps=2))
        loaded = load_prior(tiny_priors[scheme], backbone, CPU)
        assert type(prior) is cls and prior.kind == scheme and [r.role for r in inputs] == ["prior"]
        assert all(torch.equal(a, b) for a, b in zip(prior.energy.state_dict().values(), loaded.energy.state_dict().values()))
        assert prior.n_steps == 2 and prior.describe(1.0, 0)["training_langevin_steps"] == 3
        assert prior.manifest_fields()["step_sizes"] == pytest.approx(loaded.manifest.step_sizes)
        a, _ = prior.draw(4, torch.Generator().manual_seed(0))
        b, _ = prior.draw(4, torch.Generator().manual_seed(0))
        assert torch.equal(a, b) and not torch.equal(a, torch.randn(4, a.shape[1], generator=torch.Generator().manual_seed(0)))
    diffusion, _ = open_prior(tiny_priors["diffusion"], backbone, CPU, priors.SamplingOptions(langevin_steps=1))
    assert diffusion.step_size == pytest.approx(3**0.5)  # CDRL's sqrt(K_train / K)


def test_each_prior_reports_its_gap_in_its_loss_units(toy_priors):
    """The runaway guard's quantity: joint mean F(pos) - mean F(neg); diffusion mean((G_pos - G_neg) / s_t^2) = -loss."""
    g = torch.Generator().manual_seed(7)
    joint = toy_priors["joint"].training_outcome(mixture(64, g), g)
    gap = float(joint.gap)  # a tensor [] on the device: the trainer reads it with the update's other numbers
    assert gap == pytest.approx(float((joint.pos.mean() - joint.neg.mean()).detach())) == pytest.approx(-float(joint.loss.detach()))
    diffusion = toy_priors["diffusion"].training_outcome(mixture(64, g), g)
    assert float(diffusion.gap) == pytest.approx(-float(diffusion.loss.detach()), rel=1e-5)
    raw = float((diffusion.pos.mean() - diffusion.neg.mean()).detach())
    assert abs(diffusion.gap) > 10 * abs(raw)  # s_t^2 <= 0.1 on the toy (b2 = 1e-3)
