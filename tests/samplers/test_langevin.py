"""Langevin sampler (DESIGN §3 update rule) on analytic targets."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from hebmctl.samplers import (
    ChainStats,
    joint_prior_log_density,
    langevin,
    sample_joint_prior,
)

pytestmark = pytest.mark.usefixtures("single_thread")


MEAN = torch.tensor([1.0, -2.0])
VAR = torch.tensor([0.5, 2.0])


def gaussian_log_density(u: torch.Tensor) -> torch.Tensor:
    """log N(u; MEAN, diag(VAR)) + const, [B, 2] -> [B]."""
    return -0.5 * ((u - MEAN) ** 2 / VAR).sum(dim=1)


def ula_stationary_var(var: torch.Tensor, s: float) -> torch.Tensor:
    """Exact stationary variance of unadjusted Langevin on N(m, v) with step s.

    u' = (1 - s^2/(2v)) u + ... + s eps  =>  Var = s^2 / (1 - (1 - s^2/(2v))^2) = v / (1 - s^2/(4v)).
    """
    return var / (1.0 - s * s / (4.0 * var))


def run_gaussian(step_size, n_chains=4000, n_steps=600, seed=0):
    g = torch.Generator().manual_seed(seed)
    u0 = torch.randn(n_chains, 2, generator=g)
    return langevin(gaussian_log_density, u0, n_steps, step_size, g)


def test_gaussian_target_mean_and_variance():
    # s = 0.2: per-step contraction of the mean error is 1 - s^2/(2v) <= 0.99 (v = 2), so after 600
    # steps the initial error (|m| ~ 2) is < 2 * 0.99^600 ~ 0.005. Standard errors with 4000 chains:
    # mean sqrt(v/4000) <= 0.022, variance v * sqrt(2/4000) ~ 2.2% relative. Tolerances: 0.1 on the
    # mean (> 4.5 SE), 8% on the variance (> 3.5 SE); the ULA bias itself is at most 2% here and is
    # accounted for exactly by ula_stationary_var.
    s = 0.2
    u, stats = run_gaussian(s)
    assert torch.allclose(u.mean(0), MEAN, atol=0.1), u.mean(0)
    target_var = ula_stationary_var(VAR, s)
    assert torch.allclose(u.var(0), target_var, rtol=0.08), (u.var(0), target_var)
    # And a chain that did not move fails the same checks (the test can fail).
    g = torch.Generator().manual_seed(0)
    u_stuck = torch.randn(4000, 2, generator=g)
    assert not torch.allclose(u_stuck.mean(0), MEAN, atol=0.1)


def test_chain_stats_shapes_and_values():
    g = torch.Generator().manual_seed(3)
    u0 = torch.randn(64, 2, generator=g)
    u, stats = langevin(gaussian_log_density, u0, 7, 0.3, g)
    assert isinstance(stats, ChainStats)
    for field in (stats.log_density, stats.grad_norm, stats.step_size):
        assert field.shape == (7,)
        assert field.dtype == torch.float32
        assert field.device.type == "cpu"
    assert stats.n_steps == 7 and stats.is_finite()
    # Entry 0 describes the state before the first step.
    assert torch.isclose(stats.log_density[0], gaussian_log_density(u0).mean(), rtol=1e-5)
    grad0 = -(u0 - MEAN) / VAR
    assert torch.isclose(stats.grad_norm[0], grad0.norm(dim=1).mean(), rtol=1e-5)
    assert torch.allclose(stats.step_size, torch.full((7,), 0.3))
    assert len(stats.to_dict()["grad_norm"]) == 7
    # Chains approach the mode: mean log-density goes up.
    assert stats.log_density[-1] > stats.log_density[0]


def test_zero_steps_returns_detached_copy():
    g = torch.Generator().manual_seed(0)
    u0 = torch.randn(5, 2, requires_grad=True)
    u, stats = langevin(gaussian_log_density, u0, 0, 0.1, g)
    assert torch.equal(u, u0.detach()) and not u.requires_grad
    assert stats.n_steps == 0 and stats.log_density.shape == (0,)


def test_exact_update_rule_one_step():
    """u_1 = u_0 + (s^2/2) grad log p(u_0) + s eps, eps from the same generator state."""
    s = 0.37
    u0 = torch.randn(10, 2, generator=torch.Generator().manual_seed(1))
    g = torch.Generator().manual_seed(42)
    u1, _ = langevin(gaussian_log_density, u0, 1, s, g)
    eps = torch.randn(10, 2, generator=torch.Generator().manual_seed(42))
    expected = u0 + 0.5 * s * s * (-(u0 - MEAN) / VAR) + s * eps
    assert torch.allclose(u1, expected, atol=1e-6)


def test_no_noise_is_gradient_ascent():
    u0 = torch.randn(100, 2, generator=torch.Generator().manual_seed(0))
    g = torch.Generator().manual_seed(0)
    state = g.get_state()
    u, _ = langevin(gaussian_log_density, u0, 400, 0.5, g, add_noise=False)
    assert torch.allclose(u, MEAN.expand(100, 2), atol=1e-3)
    assert torch.equal(g.get_state(), state)  # no draws without noise


def test_per_example_step_size():
    # Constant tensor [B] == float, bit for bit.
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    u0 = torch.randn(50, 2, generator=torch.Generator().manual_seed(9))
    a, _ = langevin(gaussian_log_density, u0, 20, 0.25, g1)
    b, stats = langevin(gaussian_log_density, u0, 20, torch.full((50,), 0.25), g2)
    assert torch.equal(a, b)
    assert torch.allclose(stats.step_size, torch.full((20,), 0.25))

    # Two groups of chains with different step sizes reach *their own* ULA stationary variance:
    # for v = 0.5, s = 0.1 gives 0.5013 and s = 0.6 gives 0.61 (22% apart, > 6 SE at 4000 chains).
    n = 8000
    s_small, s_big = 0.1, 0.6
    steps = torch.cat([torch.full((n // 2,), s_small), torch.full((n // 2,), s_big)])
    g = torch.Generator().manual_seed(11)
    u0 = MEAN + VAR.sqrt() * torch.randn(n, 2, generator=g)  # start at the target: only the bias remains
    u, stats = langevin(gaussian_log_density, u0, 300, steps, g)
    assert torch.isclose(stats.step_size[0], steps.mean())
    var_small = u[: n // 2, 0].var()
    var_big = u[n // 2 :, 0].var()
    assert torch.isclose(var_small, ula_stationary_var(VAR[0], s_small), rtol=0.07), var_small
    assert torch.isclose(var_big, ula_stationary_var(VAR[0], s_big), rtol=0.07), var_big
    assert var_big > var_small * 1.1

    with pytest.raises(ValueError):
        langevin(gaussian_log_density, u0, 1, torch.ones(3), g)


def test_same_seed_same_result_and_different_seed_differs():
    u0 = torch.zeros(32, 2)
    a, sa = langevin(gaussian_log_density, u0, 10, 0.3, torch.Generator().manual_seed(7))
    b, sb = langevin(gaussian_log_density, u0, 10, 0.3, torch.Generator().manual_seed(7))
    c, _ = langevin(gaussian_log_density, u0, 10, 0.3, torch.Generator().manual_seed(8))
    assert torch.equal(a, b) and torch.equal(sa.log_density, sb.log_density)
    assert not torch.equal(a, c)


def test_global_rng_untouched():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    langevin(gaussian_log_density, torch.zeros(8, 2), 5, 0.3, torch.Generator().manual_seed(0))
    assert torch.equal(torch.rand(3), expected)


def test_no_grad_leaks_into_model_parameters():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(2, 16), nn.SiLU(), nn.Linear(16, 1))

    def log_density(u):
        return net(u).squeeze(1) - 0.5 * (u**2).sum(1)

    u0 = torch.randn(16, 2, requires_grad=True)
    g = torch.Generator().manual_seed(0)
    u, _ = langevin(log_density, u0, 5, 0.3, g)
    assert all(p.grad is None for p in net.parameters())
    assert u0.grad is None
    assert not u.requires_grad and u.grad_fn is None

    # Works under torch.no_grad() and gives the same chain.
    with torch.no_grad():
        u_ng, _ = langevin(log_density, u0, 5, 0.3, torch.Generator().manual_seed(0))
    assert torch.equal(u, u_ng)
    assert all(p.grad is None for p in net.parameters())

    # A subsequent loss on the sample only reaches the parameters through the network, not the chain.
    loss = net(u).mean()
    loss.backward()
    assert all(p.grad is not None for p in net.parameters())


def test_joint_prior_log_density_and_sampler():
    torch.manual_seed(0)
    net = nn.Linear(3, 1)

    def neg_energy(u):
        return net(u).squeeze(1)

    u = torch.randn(6, 3)
    lp = joint_prior_log_density(neg_energy)
    assert torch.allclose(lp(u), neg_energy(u) - 0.5 * (u**2).sum(1))

    # F = 0: the joint prior is N(0, I), so the chain keeps N(0, I) (up to ULA bias 1/(1 - s^2/4)).
    def zero(u):
        return torch.zeros(u.shape[0])

    g = torch.Generator().manual_seed(0)
    u0 = torch.randn(4000, 3, generator=g)
    s = 0.3
    u_k, stats = sample_joint_prior(zero, u0, 100, s, g)
    assert stats.n_steps == 100
    assert torch.allclose(u_k.mean(0), torch.zeros(3), atol=0.08)
    assert torch.allclose(u_k.var(0), torch.full((3,), 1 / (1 - s * s / 4)), rtol=0.08)
