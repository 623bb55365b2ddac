"""Diffusion schedules and forward pairs (DESIGN §3, Diffusion / Cooperative schemes)."""

from __future__ import annotations

import math

import pytest
import torch

from hebmctl.samplers import (
    DiffusionSchedule,
    anchor_step_sizes_sq,
    cosine_schedule,
    drl_boundaries,
    drl_schedule,
    forward_pairs,
    forward_pairs_shared_noise,
    make_schedule,
)

pytestmark = pytest.mark.usefixtures("single_thread")


def test_drl_t3_matches_design():
    sched = drl_schedule(3)
    assert sched.name == "drl" and sched.num_levels == 3
    assert torch.allclose(sched.alpha, torch.tensor([0.99995, 0.72213, 0.38627, 0.02278]), atol=1e-4)
    assert torch.allclose(sched.sigma, torch.tensor([0.0100, 0.6918, 0.9224, 0.9997]), atol=1e-4)
    assert torch.allclose(sched.alpha**2 + sched.sigma**2, torch.ones(4), atol=1e-6)
    # alpha_cum includes alpha_0; sigma_cum = sqrt(1 - alpha_cum^2).
    assert torch.allclose(sched.alpha_cum, torch.cumprod(sched.alpha, 0), rtol=1e-6)
    assert torch.allclose(sched.alpha_cum**2 + sched.sigma_cum**2, torch.ones(4), atol=1e-6)
    assert torch.allclose(sched.sigma_cum, torch.tensor([0.01, 0.69179, 0.96031, 0.99998]), atol=1e-4)
    for x in (sched.alpha, sched.sigma, sched.alpha_cum, sched.sigma_cum):
        assert x.dtype == torch.float32 and x.shape == (4,)


def test_drl_boundaries():
    assert drl_boundaries(3) == [0, 250, 500, 999]
    assert drl_boundaries(6) == [0, 100, 200, 300, 400, 500, 999]
    assert drl_boundaries(2) == [0, 500, 999]
    assert drl_boundaries(1) == [0, 999]  # documented choice: the formula divides by zero
    for bad in (0, -1, 502):
        with pytest.raises(ValueError):
            drl_boundaries(bad)
    with pytest.raises(ValueError):
        drl_schedule(0)


def test_drl_segments_multiply_to_full_process():
    """Segments tile 0..999, so alpha_cum[T] = prod_j sqrt(1 - beta_j) for every T."""
    betas = torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64)
    full = torch.prod(torch.sqrt(1 - betas)).item()
    for T in (1, 2, 3, 6):
        sched = drl_schedule(T)
        assert sched.num_levels == T
        assert math.isclose(sched.alpha_cum[-1].item(), full, rel_tol=1e-4)
        assert torch.all(sched.alpha[1:] < 1) and torch.all(sched.sigma[1:] > 0)
    t6 = drl_schedule(6)
    assert torch.all(t6.alpha_cum[1:] < t6.alpha_cum[:-1])


def test_cosine_schedule():
    for T in (1, 3, 6):
        sched = cosine_schedule(T)
        assert sched.name == "cosine" and sched.num_levels == T
        assert torch.all(sched.alpha_cum[1:] < sched.alpha_cum[:-1])  # strictly decreasing
        assert torch.all(sched.sigma_cum[1:] > sched.sigma_cum[:-1])
        # alpha_cum_0 = sqrt(sigmoid(20)) = 1 - 1e-9 rounds to 1.0 in float32 (documented).
        assert torch.all(sched.alpha_cum > 0) and torch.all(sched.alpha_cum <= 1)
        assert torch.all(sched.sigma_cum > 0) and torch.all(sched.sigma_cum <= 1)
        assert torch.all(sched.sigma_cum[:-1] < 1)
        assert torch.all(sched.alpha > 0) and torch.all(sched.alpha <= 1)
        assert torch.allclose(sched.alpha**2 + sched.sigma**2, torch.ones(T + 1), atol=1e-6)
        assert torch.allclose(sched.alpha_cum, torch.cumprod(sched.alpha.double(), 0).float(), rtol=1e-5)
        # Endpoints: logsnr(0) = logsnr_max, logsnr(1) = logsnr_min.
        assert math.isclose(sched.sigma_cum[0].item() ** 2, 1 / (1 + math.exp(20)), rel_tol=1e-4)
        assert math.isclose(sched.alpha_cum[-1].item() ** 2, 1 / (1 + math.exp(20)), rel_tol=1e-4)
    # Symmetric logsnr range: a t + b = pi/4 at t = 1/2, logsnr = 0, alphabar = 1/2.
    mid = cosine_schedule(2).alpha_cum[1].item()
    assert math.isclose(mid**2, 0.5, rel_tol=1e-5)
    # A narrower range keeps alpha_cum strictly inside (0, 1).
    narrow = cosine_schedule(4, logsnr_min=-6.0, logsnr_max=6.0)
    assert torch.all(narrow.alpha_cum < 1) and torch.all(narrow.alpha_cum > 0)
    with pytest.raises(ValueError):
        cosine_schedule(0)
    with pytest.raises(ValueError):
        cosine_schedule(3, logsnr_min=1.0, logsnr_max=1.0)


def test_make_schedule_and_dict_round_trip():
    assert make_schedule("drl", 3).name == "drl"
    assert make_schedule("cosine", 4, logsnr_min=-10.0).num_levels == 4
    with pytest.raises(ValueError):
        make_schedule("linear", 3)
    sched = drl_schedule(3)
    d = sched.to_dict()
    assert d["name"] == "drl" and d["num_levels"] == 3 and len(d["alpha"]) == 4
    assert all(isinstance(x, float) for x in d["sigma_cum"])
    back = DiffusionSchedule.from_dict(d)
    assert torch.equal(back.alpha, sched.alpha) and torch.equal(back.sigma_cum, sched.sigma_cum)
    with pytest.raises(ValueError):
        DiffusionSchedule(torch.ones(4), torch.ones(3), torch.ones(4), torch.ones(4), "bad")


def test_anchor_step_sizes_t3_by_hand():
    # s_t^2 = (sigma_cum[t] / sigma_cum[0]) * b2 * sigma[t+1]^2, with (float64, by hand)
    # sigma_cum = [0.01, 0.69179258, 0.96031419], sigma[1:] = [0.69175489, 0.92238785, 0.99974058]:
    # t=0: 1          * 3e-5 * 0.69175489^2 = 1.43557e-5
    # t=1: 69.179258  * 3e-5 * 0.92238785^2 = 1.76573e-3
    # t=2: 96.031419  * 3e-5 * 0.99974058^2 = 2.87945e-3
    s_sq = anchor_step_sizes_sq(drl_schedule(3))
    assert s_sq.shape == (3,) and s_sq.dtype == torch.float32
    assert torch.allclose(s_sq, torch.tensor([1.43557e-5, 1.76573e-3, 2.87945e-3]), rtol=1e-4)
    assert torch.allclose(anchor_step_sizes_sq(drl_schedule(3), b2=1e-3), s_sq * (1e-3 / 3e-5), rtol=1e-5)
    with pytest.raises(ValueError):
        anchor_step_sizes_sq(drl_schedule(3), b2=0.0)


N_PAIRS = 40000


@pytest.mark.parametrize("level", [0, 1, 2])
def test_forward_pairs_moments(level):
    # Per coordinate: E u_t = abar_t u0, Var u_t = sbar_t^2; u_{t+1} = a_{t+1} u_t + s_{t+1} eps2 gives
    # E u_{t+1} = abar_{t+1} u0, Var = a_{t+1}^2 sbar_t^2 + s_{t+1}^2 = sbar_{t+1}^2,
    # Cov(u_t, u_{t+1}) = a_{t+1} sbar_t^2. SE of the mean <= 0.005; tolerances 0.02 / 4% (> 4 SE).
    sched = drl_schedule(3)
    u0 = torch.tensor([1.5, -0.5]).expand(N_PAIRS, 2)
    t = torch.full((N_PAIRS,), level, dtype=torch.long)
    u_t, u_tp1 = forward_pairs(u0, t, sched, torch.Generator().manual_seed(level))
    ac, sc, a = sched.alpha_cum, sched.sigma_cum, sched.alpha
    assert torch.allclose(u_t.mean(0), ac[level] * u0[0], atol=0.02)
    assert torch.allclose(u_t.var(0), sc[level].pow(2).expand(2), rtol=0.04)
    assert torch.allclose(u_tp1.mean(0), ac[level + 1] * u0[0], atol=0.02)
    assert torch.allclose(u_tp1.var(0), sc[level + 1].pow(2).expand(2), rtol=0.04)
    cov = ((u_t - u_t.mean(0)) * (u_tp1 - u_tp1.mean(0))).mean(0)
    assert torch.allclose(cov, (a[level + 1] * sc[level] ** 2).expand(2), rtol=0.06, atol=2e-3)


def test_forward_pairs_shared_noise_moments():
    # Same marginals as forward_pairs, but Cov(u_t, u_{t+1}) = sbar_t sbar_{t+1} (one eps).
    sched = drl_schedule(3)
    level = 1
    u0 = torch.tensor([1.5, -0.5]).expand(N_PAIRS, 2)
    t = torch.full((N_PAIRS,), level, dtype=torch.long)
    u_t, u_tp1 = forward_pairs_shared_noise(u0, t, sched, torch.Generator().manual_seed(0))
    ac, sc = sched.alpha_cum, sched.sigma_cum
    assert torch.allclose(u_t.mean(0), ac[level] * u0[0], atol=0.02)
    assert torch.allclose(u_tp1.mean(0), ac[level + 1] * u0[0], atol=0.02)
    assert torch.allclose(u_t.var(0), sc[level].pow(2).expand(2), rtol=0.04)
    assert torch.allclose(u_tp1.var(0), sc[level + 1].pow(2).expand(2), rtol=0.04)
    # Deterministic relation: (u_{t+1} - abar_{t+1} u0) / sbar_{t+1} == (u_t - abar_t u0) / sbar_t.
    eps_t = (u_t - ac[level] * u0) / sc[level]
    eps_tp1 = (u_tp1 - ac[level + 1] * u0) / sc[level + 1]
    assert torch.allclose(eps_t, eps_tp1, atol=1e-4)


def test_forward_pairs_mixed_levels_and_determinism():
    sched = drl_schedule(3)
    u0 = torch.randn(6, 4, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([0, 1, 2, 2, 1, 0])
    a1, b1 = forward_pairs(u0, t, sched, torch.Generator().manual_seed(3))
    a2, b2 = forward_pairs(u0, t, sched, torch.Generator().manual_seed(3))
    assert torch.equal(a1, a2) and torch.equal(b1, b2)
    # Reconstruct from the same draws (eps1 then eps2) to check the per-example gather.
    g = torch.Generator().manual_seed(3)
    eps1, eps2 = torch.randn(6, 4, generator=g), torch.randn(6, 4, generator=g)
    exp_t = sched.alpha_cum[t, None] * u0 + sched.sigma_cum[t, None] * eps1
    exp_tp1 = sched.alpha[t + 1, None] * exp_t + sched.sigma[t + 1, None] * eps2
    assert torch.allclose(a1, exp_t) and torch.allclose(b1, exp_tp1)
    with pytest.raises(ValueError):
        forward_pairs(u0, t.float(), sched, g)
