"""Samplers: Langevin dynamics, diffusion schedules, reverse-diffusion sampling; CUDA-graph capture of the Langevin
step in :mod:`hebmctl.samplers.graphs`.

Pure functions (DESIGN §7): no I/O, no global RNG (always an explicit ``torch.Generator``), no
hidden counters. Never imports ``hebmctl.stages``, ``hebmctl.cli`` or ``hebmctl.io``.
"""

from hebmctl.samplers.diffusion import (
    Initializer,
    LevelNegEnergy,
    conditional_log_density,
    reverse_diffusion_sample,
)
from hebmctl.samplers.langevin import (
    ChainStats,
    Density,
    LogDensity,
    joint_prior_log_density,
    langevin,
    langevin_step,
    sample_joint_prior,
)
from hebmctl.samplers.schedules import (
    DiffusionSchedule,
    anchor_step_sizes_sq,
    cosine_schedule,
    drl_boundaries,
    drl_schedule,
    forward_pairs,
    forward_pairs_shared_noise,
    make_schedule,
)

__all__ = [
    "ChainStats",
    "Density",
    "DiffusionSchedule",
    "Initializer",
    "LevelNegEnergy",
    "LogDensity",
    "anchor_step_sizes_sq",
    "conditional_log_density",
    "cosine_schedule",
    "drl_boundaries",
    "drl_schedule",
    "forward_pairs",
    "forward_pairs_shared_noise",
    "joint_prior_log_density",
    "langevin",
    "langevin_step",
    "make_schedule",
    "reverse_diffusion_sample",
    "sample_joint_prior",
]
