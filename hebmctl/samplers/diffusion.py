"""Diff-EBM: conditional EBMs along a short diffusion in u-space (DESIGN §3, Diffusion scheme).

The conditional EBM at level ``t = 0..T-1`` (scaled parametrisation, ``c_t = s_t^2``)::

    log p(u_t | u_{t+1}) = G(T(u_t), t) / s_t^2 - |u_t|^2 / 2
                           - |u_{t+1} - alpha_{t+1} u_t|^2 / (2 sigma_{t+1}^2) + const

with the kernel term dropped at the top level ``t = T-1`` (the anchor's ``is_recovery[T] = 0``).
Langevin on it (:func:`hebmctl.samplers.langevin.langevin`, step ``s_t``) is the anchor's scaled
update ``u <- u + 0.5 grad G - 0.5 s_t^2 grad Q + s_t eps``.

Pure functions; randomness only through the caller's ``torch.Generator`` (DESIGN §7).
"""

from __future__ import annotations

import functools
from typing import Callable, Literal, overload

import torch
from torch import Tensor

from hebmctl.samplers.langevin import EAGER, ChainStats, Density, StepRunner, langevin
from hebmctl.samplers.schedules import DiffusionSchedule

__all__ = [
    "LevelNegEnergy",
    "Initializer",
    "conditional_log_density",
    "reverse_diffusion_sample",
]

#: ``G(T(u), t)``: u ``[B, D]``, t LongTensor ``[B]`` -> ``[B]`` (the caller composes ``T``).
LevelNegEnergy = Callable[[Tensor, Tensor], Tensor]

#: Proposes the chain's start at level t: ``(u_{t+1} [B, D], t [B], generator) -> u_init [B, D]``.
Initializer = Callable[[Tensor, Tensor, torch.Generator], Tensor]


def _per_example(values: Tensor, t: Tensor, like: Tensor) -> Tensor:
    """``values[t]`` as ``[B, 1, ..., 1]`` (broadcastable against ``like`` ``[B, ...]``)."""
    v = values.to(device=like.device, dtype=like.dtype)[t.to(like.device)]
    return v.reshape((like.shape[0],) + (1,) * (like.dim() - 1))


def conditional_log_density(
    neg_energy: LevelNegEnergy,
    u_tp1: Tensor,
    t: Tensor,
    schedule: DiffusionSchedule,
    step_size_sq: Tensor,
) -> Density:
    """The level-t conditional log-density ``u_t -> log p(u_t | u_{t+1})`` (DESIGN §3).

    ``G(u_t, t) / s_t^2 - |u_t|^2/2 - [t < T-1] * |u_{t+1} - alpha_{t+1} u_t|^2 / (2 sigma_{t+1}^2)``,
    evaluated per example (each example has its own level).

    Args:
        neg_energy: ``G``: (u ``[B, D]``, t ``[B]``) -> ``[B]``, already composed with ``T``.
        u_tp1: the conditioning state ``u_{t+1}`` ``[B, D]``.
        t: LongTensor ``[B]`` with levels in ``0..T-1``.
        schedule: the diffusion schedule (T levels).
        step_size_sq: ``s^2`` per level ``[T]`` (the values the EBM is trained with); gathered at t.

    Returns:
        A :class:`~hebmctl.samplers.langevin.Density` u_t ``[B, D]`` -> ``[B]`` whose inputs are the
        per-example tensors above (so a captured Langevin step can be refilled per chain).
    """
    T = schedule.num_levels
    if step_size_sq.shape != (T,):
        raise ValueError(f"step_size_sq must have shape [T]=[{T}], got {tuple(step_size_sq.shape)}")
    if t.shape != (u_tp1.shape[0],):
        raise ValueError(f"t must have shape [B]=[{u_tp1.shape[0]}], got {tuple(t.shape)}")
    t = t.to(u_tp1.device)
    u_tp1 = u_tp1.detach()
    s_sq = _per_example(step_size_sq, t, u_tp1).flatten()  # [B]
    alpha_next = _per_example(schedule.alpha, t + 1, u_tp1)  # [B, 1]
    sigma_next_sq = _per_example(schedule.sigma, t + 1, u_tp1).flatten() ** 2  # [B]
    # is_recovery: the kernel term is dropped at the top level t = T-1 (anchor's is_recovery[T] = 0).
    is_recovery = (t < T - 1).to(u_tp1.dtype)  # [B]

    return Density(fn=functools.partial(_conditional, neg_energy), inputs=(u_tp1, t, s_sq, alpha_next, sigma_next_sq, is_recovery),
                   key=("conditional", neg_energy))


def _conditional(neg_energy: LevelNegEnergy, u_t: Tensor, u_tp1: Tensor, t: Tensor, s_sq: Tensor, alpha_next: Tensor,
                 sigma_next_sq: Tensor, is_recovery: Tensor) -> Tensor:
    """``log p(u_t | u_{t+1})`` ``[B]`` (DESIGN §3): u_t, u_tp1 ``[B, D]``; t, s_sq, sigma_next_sq, is_recovery ``[B]``;
    alpha_next ``[B, 1]``."""
    g = neg_energy(u_t, t)  # G(T(u_t), t)  [B]
    prior = 0.5 * u_t.flatten(1).pow(2).sum(dim=1)  # |u_t|^2 / 2
    resid = (u_tp1 - alpha_next * u_t).flatten(1).pow(2).sum(dim=1)
    kernel = is_recovery * resid / (2.0 * sigma_next_sq)
    return g / s_sq - prior - kernel


@overload
def reverse_diffusion_sample(
    neg_energy: LevelNegEnergy,
    u_top: Tensor,
    schedule: DiffusionSchedule,
    step_sizes_sq: Tensor,
    n_steps: int,
    generator: torch.Generator,
    step_scale: float = ...,
    return_trajectory: Literal[False] = ...,
    initializer: Initializer | None = ...,
    add_noise: bool = ...,
    runner: StepRunner = ...,
) -> tuple[Tensor, list[ChainStats]]: ...


@overload
def reverse_diffusion_sample(
    neg_energy: LevelNegEnergy,
    u_top: Tensor,
    schedule: DiffusionSchedule,
    step_sizes_sq: Tensor,
    n_steps: int,
    generator: torch.Generator,
    step_scale: float = ...,
    return_trajectory: Literal[True] = ...,
    initializer: Initializer | None = ...,
    add_noise: bool = ...,
    runner: StepRunner = ...,
) -> tuple[Tensor, list[ChainStats], list[Tensor]]: ...


def reverse_diffusion_sample(
    neg_energy: LevelNegEnergy,
    u_top: Tensor,
    schedule: DiffusionSchedule,
    step_sizes_sq: Tensor,
    n_steps: int,
    generator: torch.Generator,
    step_scale: float = 1.0,
    return_trajectory: bool = False,
    initializer: Initializer | None = None,
    add_noise: bool = True,
    runner: StepRunner = EAGER,
) -> tuple[Tensor, list[ChainStats]] | tuple[Tensor, list[ChainStats], list[Tensor]]:
    """Reverse-diffusion sampling (Diff-EBM Alg. 2; DESIGN §3 "Sampling").

    ``u_T = u_top`` (the caller draws ``N(0, I)``); for ``t = T-1 .. 0``: K Langevin steps on
    :func:`conditional_log_density` at level t, initialised at ``u_{t+1}`` (or at
    ``initializer(u_{t+1}, t, generator)`` when given, CDRL's cooperative initializer).

    Step sizes: the Langevin step is ``s = sqrt(step_sizes_sq[t]) * step_scale`` while the density
    keeps the *training* value ``G / step_sizes_sq[t]``. So ``step_scale`` changes the sampler, not
    the target: the update is ``u + 0.5 c^2 grad G - 0.5 c^2 s_t^2 grad Q + c s_t eps``
    (``c = step_scale``). CDRL's fewer-steps adjustment (K' < K steps) is
    ``step_scale = sqrt(K / K')``.

    Args:
        neg_energy: ``G``: (u ``[B, D]``, t LongTensor ``[B]``) -> ``[B]``, composed with ``T``.
        u_top: ``u_T`` ``[B, D]``.
        schedule: the diffusion schedule (T levels).
        step_sizes_sq: training ``s_t^2`` per level ``[T]`` (e.g. :func:`anchor_step_sizes_sq`).
        n_steps: K Langevin steps per level.
        generator: the only source of randomness (initializer draws, then Langevin, per level).
        step_scale: multiplies the Langevin step ``s`` (not the density's ``1/s_t^2``).
        return_trajectory: also return ``[u_T, u_{T-1}, ..., u_0]`` (T+1 detached tensors).
        initializer: optional start-of-chain proposal per level (default: ``u_{t+1}`` itself).
        add_noise: False runs noiseless chains (passed to :func:`langevin`).
        runner: how each level's K steps run (passed to :func:`langevin`; eager by default).

    Returns:
        ``(u_0 [B, D], stats)`` where ``stats`` holds one :class:`ChainStats` per level, ordered
        ``t = T-1, T-2, ..., 0`` (the order they run in); with ``return_trajectory`` a third item,
        the trajectory list above.
    """
    T = schedule.num_levels
    if step_sizes_sq.shape != (T,):
        raise ValueError(f"step_sizes_sq must have shape [T]=[{T}], got {tuple(step_sizes_sq.shape)}")
    if step_scale <= 0:
        raise ValueError(f"step_scale must be > 0, got {step_scale}")
    batch = u_top.shape[0]
    u = u_top.detach()
    trajectory: list[Tensor] = [u]
    stats: list[ChainStats] = []
    for level in range(T - 1, -1, -1):
        t = torch.full((batch,), level, dtype=torch.long, device=u.device)
        log_p = conditional_log_density(neg_energy, u, t, schedule, step_sizes_sq)
        u_init = u if initializer is None else initializer(u, t, generator).detach()
        # Langevin step s = sqrt(s_t^2) * step_scale; the target keeps G / s_t^2 (training value).
        s = step_sizes_sq[level].to(device=u.device, dtype=u.dtype).sqrt() * step_scale
        u, level_stats = langevin(log_p, u_init, n_steps, s, generator, add_noise=add_noise, runner=runner)
        stats.append(level_stats)
        trajectory.append(u)
    if return_trajectory:
        return u, stats, trajectory
    return u, stats
