"""Sampling some latent coordinates with the others held fixed (hierarchical sampling, Hier-EBM Fig. 4-6).

The free coordinates are selected by a 0/1 `mask [D]` (1 = resampled). Langevin runs on the
composed state `u = u_fixed * (1 - mask) + v * mask`, so the fixed coordinates never move and
the free ones follow the conditional density p(u_free | u_fixed), which is proportional to the
joint density (DESIGN §3) — no normaliser is needed. Pure functions, explicit generator.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from hebmctl.samplers.diffusion import conditional_log_density
from hebmctl.samplers.langevin import ChainStats, LogDensity, joint_prior_log_density, langevin
from hebmctl.samplers.schedules import DiffusionSchedule


def compose(u_fixed: Tensor, v: Tensor, mask: Tensor) -> Tensor:
    """`[B, D]` state with the masked coordinates from v and the rest from u_fixed."""
    return u_fixed * (1 - mask) + v * mask


def masked_log_density(log_density: LogDensity, u_fixed: Tensor, mask: Tensor) -> LogDensity:
    """v -> log p(compose(u_fixed, v, mask)): the conditional of the free coordinates (unnormalised)."""
    return lambda v: log_density(compose(u_fixed, v, mask))


def resample_masked_joint(
    neg_energy_of_u: Callable[[Tensor], Tensor], u_fixed: Tensor, mask: Tensor, n_steps: int, step_size: float, generator: torch.Generator
) -> tuple[Tensor, ChainStats]:
    """Joint scheme: free coordinates drawn from N(0, I), then K Langevin steps of p(u_free | u_fixed)."""
    v0 = torch.randn(u_fixed.shape, generator=generator, device=u_fixed.device)
    log_p = masked_log_density(joint_prior_log_density(neg_energy_of_u), u_fixed, mask)
    v, stats = langevin(log_p, v0, n_steps, step_size, generator)
    return compose(u_fixed, v, mask), stats


def forward_trajectory(u0: Tensor, schedule: DiffusionSchedule, generator: torch.Generator) -> list[Tensor]:
    """One draw of the forward process from u0 `[B, D]`: `[u_0', u_1, ..., u_{T-1}]` (T tensors `[B, D]`), with
    `u_0' = alpha_cum[0] u0 + sigma_cum[0] eps_0` and `u_{t+1} = alpha[t+1] u_t + sigma[t+1] eps_{t+1}` (DESIGN §3)."""
    levels = [schedule.alpha_cum[0] * u0 + schedule.sigma_cum[0] * torch.randn(u0.shape, generator=generator, device=u0.device)]
    for level in range(1, schedule.num_levels):
        eps = torch.randn(u0.shape, generator=generator, device=u0.device)
        levels.append(schedule.alpha[level] * levels[-1] + schedule.sigma[level] * eps)
    return levels


def resample_masked_diffusion(
    neg_energy: Callable[[Tensor, Tensor], Tensor],
    u_fixed: Tensor,
    mask: Tensor,
    schedule: DiffusionSchedule,
    step_sizes_sq: Tensor,
    n_steps: int,
    generator: torch.Generator,
    step_scale: float = 1.0,
) -> tuple[Tensor, list[ChainStats]]:
    """Diffusion scheme: reverse diffusion of the free coordinates with the fixed ones clamped.

    The fixed coordinates follow ONE forward trajectory of u_fixed (`forward_trajectory`, drawn once) and
    take its level-t value at level t (the "replacement" conditioning of diffusion inpainting); the free
    ones start from N(0, I) at level T and follow K Langevin steps of log p(u_t | u_{t+1}) (DESIGN §3) per
    level, t = T-1 .. 0. Fresh noise at every level would make consecutive levels of the fixed part
    independent, which the kernel term |u_{t+1} - alpha_{t+1} u_t|^2 never saw in training.
    Returns u_0 `[B, D]` (the fixed coordinates exactly u_fixed) and stats per level.
    """
    batch, device = u_fixed.shape[0], u_fixed.device
    u_next = compose(u_fixed, torch.randn(u_fixed.shape, generator=generator, device=device), mask)  # level T
    fixed = forward_trajectory(u_fixed, schedule, generator)
    all_stats = []
    for level in range(schedule.num_levels - 1, -1, -1):
        t = torch.full((batch,), level, dtype=torch.long, device=device)
        log_p = masked_log_density(conditional_log_density(neg_energy, u_next, t, schedule, step_sizes_sq), fixed[level], mask)
        step = float(step_sizes_sq[level].sqrt()) * step_scale
        v, stats = langevin(log_p, u_next, n_steps, step, generator)
        u_next = compose(fixed[level], v, mask)
        all_stats.append(stats)
    return compose(u_fixed, u_next, mask), all_stats
