"""Masked (conditional) resampling: the diffusion scheme's fixed coordinates follow one forward trajectory."""

from __future__ import annotations

import pytest
import torch

from hebmctl.samplers import anchor_step_sizes_sq, drl_schedule
from hebmctl.samplers.conditional import forward_trajectory, resample_masked_diffusion

pytestmark = pytest.mark.usefixtures("single_thread")


def test_forward_trajectory_has_the_forward_process_moments():
    sched = drl_schedule(3)
    levels = forward_trajectory(torch.ones(20000, 2), sched, torch.Generator().manual_seed(0))
    assert len(levels) == 3
    for t, u in enumerate(levels):  # u_t = alpha_cum[t] u_0 + sigma_cum[t] eps
        assert torch.allclose(u.mean(0), sched.alpha_cum[t].expand(2), atol=0.02)
        assert torch.allclose(u.std(0), sched.sigma_cum[t].expand(2), rtol=0.03, atol=2e-4)
    # consecutive levels are one trajectory: u_2 - alpha_2 u_1 is independent of u_1 with std sigma_2
    resid = levels[2] - sched.alpha[2] * levels[1]
    assert abs(float(torch.corrcoef(torch.stack([resid[:, 0], levels[1][:, 0]]))[0, 1])) < 0.03
    assert float(resid.std()) == pytest.approx(float(sched.sigma[2]), rel=0.03)


def test_masked_diffusion_uses_one_forward_trajectory_for_the_fixed_coordinates():
    """The fixed coordinate the energy sees at levels 1 and 2 must covary as one trajectory does:
    Cov(u_1, u_2) = alpha_2 sigma_cum[1]^2 (0.19) for u_fixed = 0; fresh noise per level gives 0."""
    sched = drl_schedule(3)
    seen: dict[int, torch.Tensor] = {}

    def recording_g(u, t):
        seen[int(t[0])] = u[:, 0].detach().clone()  # coordinate 0 is fixed
        return torch.zeros(u.shape[0])

    n = 8000
    u_fixed = torch.zeros(n, 2)
    mask = torch.tensor([0.0, 1.0])
    step_sizes_sq = anchor_step_sizes_sq(sched, 1e-3)
    u, stats = resample_masked_diffusion(recording_g, u_fixed, mask, sched, step_sizes_sq, 1, torch.Generator().manual_seed(0))
    assert torch.equal(u[:, 0], u_fixed[:, 0]) and len(stats) == 3
    cov = float((seen[1] * seen[2]).mean())
    assert cov == pytest.approx(float(sched.alpha[2] * sched.sigma_cum[1] ** 2), abs=0.03)
    assert float(seen[1].std()) == pytest.approx(float(sched.sigma_cum[1]), rel=0.05)
