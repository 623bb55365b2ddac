"""Langevin dynamics in u-space (DESIGN §3, "Joint scheme" and "Diffusion scheme").

Everything here is a pure function of (log-density callable, initial state, step size,
generator): no I/O, no global RNG (every random draw takes the caller's ``torch.Generator``),
no hidden counters (DESIGN §7).

The one update rule used everywhere (DESIGN §3, Joint scheme)::

    u <- u + (s^2 / 2) * grad_u log p(u) + s * eps,      eps ~ N(0, I)

The diffusion scheme's *scaled* update (DESIGN §3, Diffusion scheme)::

    u <- u + 0.5 * grad G - 0.5 * s^2 * grad Q(u) + s * eps

is exactly this rule with ``log p = G / s^2 - Q``: ``(s^2/2) * grad(G/s^2 - Q) =
0.5 grad G - 0.5 s^2 grad Q``. :mod:`hebmctl.samplers.diffusion` builds that ``log p`` and calls
:func:`langevin`; there is no second Langevin implementation.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Callable, Hashable, Protocol

import torch
from torch import Tensor

from hebmctl.noise import Noise, randn

__all__ = [
    "EAGER",
    "ChainStats",
    "Density",
    "EagerSteps",
    "LogDensity",
    "StepRunner",
    "as_density",
    "draw_noise",
    "langevin_step",
    "langevin",
    "joint_prior_log_density",
    "sample_joint_prior",
]

#: A batched unnormalised log-density: u ``[B, D]`` -> log p(u) ``[B]``.
LogDensity = Callable[[Tensor], Tensor]


@dataclass(frozen=True)
class ChainStats:
    """Per-step statistics of one Langevin chain (batch means), for logging and divergence checks.

    Every field is a float32 tensor of shape ``[K]`` on the CPU, ``K = n_steps``; entry ``k``
    describes the state *before* update ``k``.

    Attributes:
        log_density: batch mean of ``log p(u)`` (unnormalised) before each step.
        grad_norm: batch mean of the per-example L2 norm of ``grad_u log p(u)``.
        step_size: batch mean of the Langevin step size ``s`` (not ``s^2``).
    """

    log_density: Tensor
    grad_norm: Tensor
    step_size: Tensor

    @property
    def n_steps(self) -> int:
        """K, the number of Langevin steps the chain ran."""
        return int(self.log_density.shape[0])

    def is_finite(self) -> bool:
        """True when every recorded statistic is finite (callers report divergence otherwise)."""
        return bool(self.all_finite())

    def all_finite(self) -> Tensor:
        """`is_finite` as a bool tensor `[]`, without reading it on the host (the trainer gathers it with the rest)."""
        return torch.isfinite(self.log_density).all() & torch.isfinite(self.grad_norm).all() & torch.isfinite(self.step_size).all()

    def to_dict(self) -> dict[str, list[float]]:
        """Plain Python lists (for ``metrics.jsonl`` / manifests)."""
        return {
            "log_density": self.log_density.tolist(),
            "grad_norm": self.grad_norm.tolist(),
            "step_size": self.step_size.tolist(),
        }


def _per_example_step(step_size: float | Tensor, u: Tensor) -> Tensor:
    """Step size ``s`` as a tensor broadcastable against u ``[B, ...]``: shape ``[B, 1, ..., 1]``.

    Accepts a Python float, a 0-d tensor, or a tensor ``[B]`` (one step size per example).
    """
    batch = u.shape[0]
    s = torch.as_tensor(step_size, dtype=u.dtype, device=u.device).detach()
    if s.dim() == 0:
        s = s.expand(batch)
    elif s.shape != (batch,):
        raise ValueError(
            f"step_size must be a float, a 0-d tensor or a tensor of shape [B]=[{batch}]; "
            f"got shape {tuple(s.shape)}"
        )
    return s.reshape((batch,) + (1,) * (u.dim() - 1))


@dataclass(frozen=True)
class Density:
    """A log-density whose conditioning tensors are explicit inputs: ``u -> fn(u, *inputs)`` ``[B]``.

    A plain :data:`LogDensity` closure hides the tensors it reads, so a captured step could not be
    fed the next chain's ``u_{t+1}`` or levels; a ``Density`` names them, so a CUDA-graph step
    (:mod:`hebmctl.samplers.graphs`) keeps static copies and refills them per chain. ``key``
    (hashable) identifies ``fn`` (same key = same computation on same-shaped inputs).

    Attributes:
        fn: ``(u [B, D], *inputs) -> [B]``; pure, no host sync, no randomness.
        inputs: tensors the density reads (each with a leading batch or level dimension).
        key: identifies ``fn`` for the cache of captured steps.
    """

    fn: Callable[..., Tensor]
    inputs: tuple[Tensor, ...] = ()
    key: Hashable = None

    def __call__(self, u: Tensor) -> Tensor:
        return self.fn(u, *self.inputs)


def as_density(log_density: LogDensity) -> Density:
    """A :class:`Density` as is; a plain callable as a Density without inputs (key None: never captured)."""
    return log_density if isinstance(log_density, Density) else Density(fn=log_density)


def langevin_step(fn: Callable[..., Tensor], u: Tensor, eps: Tensor | None, s: Tensor, half_s_sq: Tensor,
                  inputs: tuple[Tensor, ...] = ()) -> tuple[Tensor, Tensor]:
    """One Langevin update, the only one (eager loop and captured graph run this same function).

    DESIGN §3: ``u' = u + (s^2/2) * grad_u log p(u) + s * eps``.

    Args:
        fn: ``(u [B, D], *inputs) -> log p(u)`` ``[B]``.
        u: state ``[B, D]`` (not modified).
        eps: noise ``[B, D]`` or None (no noise term).
        s, half_s_sq: ``s`` and ``s^2 / 2`` as ``[B, 1, ..., 1]``.
        inputs: the density's tensors.

    Returns:
        ``(u' [B, D] detached, stats [2])`` with stats = (batch mean of log p(u), batch mean of
        ``|grad_u log p(u)|``), both before the update; on u's device (no host sync).
    """
    with torch.enable_grad():
        u_req = u.detach().requires_grad_(True)
        log_p = fn(u_req, *inputs)
        if log_p.shape != (u.shape[0],):
            raise ValueError(f"log_density must return shape [B]=[{u.shape[0]}], got {tuple(log_p.shape)}")
        # grad_u log p(u): w.r.t. u only; parameters' .grad stay untouched.
        (grad,) = torch.autograd.grad(log_p.sum(), u_req)
    grad = grad.detach()
    stats = torch.stack([log_p.detach().mean(), grad.flatten(1).norm(dim=1).mean()])
    # DESIGN §3: u <- u + (s^2/2) grad_u log p(u) + s eps
    u_next = u + half_s_sq * grad
    if eps is not None:
        u_next = u_next + s * eps
    return u_next.detach(), stats


def draw_noise(like: Tensor, generator: Noise) -> Tensor:
    """eps ~ N(0, I) of like's shape, dtype and device from ``generator`` (one draw per step, in step order); with
    :class:`hebmctl.noise.NoiseRows` (u is a shard of a batch), this shard's rows of the whole batch's draw."""
    return randn(like.shape, generator, like.device, like.dtype)


class StepRunner(Protocol):
    """Runs a chain of :func:`langevin_step` (eager: :class:`EagerSteps`; CUDA graphs: ``hebmctl.samplers.graphs``)."""

    def chain(self, density: Density, u_init: Tensor, n_steps: int, s: Tensor, half_s_sq: Tensor,
              generator: Noise, add_noise: bool) -> tuple[Tensor, Tensor]:
        """``(u_K [B, D], stats [K, 2])`` from u_init ``[B, D]``; stats rows as :func:`langevin_step`'s."""
        ...


class EagerSteps:
    """The plain loop: noise then :func:`langevin_step`, K times; statistics stacked once at the end."""

    def chain(self, density: Density, u_init: Tensor, n_steps: int, s: Tensor, half_s_sq: Tensor,
              generator: Noise, add_noise: bool) -> tuple[Tensor, Tensor]:
        u, rows = u_init.detach().clone(), []
        for _ in range(n_steps):
            eps = draw_noise(u, generator) if add_noise else None
            u, stats = langevin_step(density.fn, u, eps, s, half_s_sq, density.inputs)
            rows.append(stats)
        return u, (torch.stack(rows) if rows else torch.zeros((0, 2), dtype=u.dtype, device=u.device))


EAGER = EagerSteps()


def langevin(
    log_density: LogDensity | Density,
    u_init: Tensor,
    n_steps: int,
    step_size: float | Tensor,
    generator: Noise,
    add_noise: bool = True,
    runner: StepRunner = EAGER,
) -> tuple[Tensor, ChainStats]:
    """Run ``n_steps`` of (unadjusted) Langevin dynamics on ``log_density``.

    Update (DESIGN §3): ``u <- u + (s^2/2) * grad_u log p(u) + s * eps``, ``eps ~ N(0, I)`` drawn
    with ``generator`` (one ``randn`` of u's shape per step, in step order).

    Gradients are taken w.r.t. u only (``torch.autograd.grad``): nothing is accumulated into the
    ``.grad`` of any model parameter. Works inside or outside ``torch.no_grad()`` (gradients are
    enabled internally). No graph is kept across steps; the returned u is detached. No host sync
    inside the loop: the per-step statistics stay on the device and are copied to the CPU once.

    Args:
        log_density: callable, u ``[B, D]`` -> unnormalised ``log p(u)`` ``[B]``, or a
            :class:`Density` (explicit inputs; what a captured runner needs).
        u_init: initial state ``[B, D]`` (not modified).
        n_steps: K >= 0.
        step_size: ``s`` as a float, or a tensor ``[B]`` (one step size per example, e.g. the
            diffusion scheme's per-example level).
        generator: ``torch.Generator`` on u's device; the only source of randomness (or
            :class:`hebmctl.noise.NoiseRows`: u is a shard of a batch and gets its rows of the batch's draws).
        add_noise: False drops the ``s * eps`` term (deterministic gradient ascent; no draws).
        runner: how the K steps run (default eager; ``hebmctl.samplers.graphs.LangevinGraphs``
            captures the step in a CUDA graph, same numbers).

    Returns:
        ``(u_K [B, D], ChainStats)`` with u_K detached, same dtype and device as ``u_init``.
    """
    if n_steps < 0:
        raise ValueError(f"n_steps must be >= 0, got {n_steps}")
    if u_init.dim() < 2:
        raise ValueError(f"u_init must have shape [B, D], got {tuple(u_init.shape)}")
    s = _per_example_step(step_size, u_init)
    half_s_sq = 0.5 * s * s
    u, rows = runner.chain(as_density(log_density), u_init, n_steps, s, half_s_sq, generator, add_noise)
    rows = rows.to(device="cpu", dtype=torch.float32)  # the chain's one host sync
    stats = ChainStats(
        log_density=rows[:, 0].clone(),
        grad_norm=rows[:, 1].clone(),
        step_size=s.detach().mean().to(device="cpu", dtype=torch.float32).expand(n_steps).clone(),
    )
    return u.detach(), stats


def _joint_log_density(neg_energy_of_u: Callable[[Tensor], Tensor], u: Tensor) -> Tensor:
    """``F(T(u)) - |u|^2 / 2`` ``[B]`` of u ``[B, D]`` (DESIGN §3, Joint scheme)."""
    return neg_energy_of_u(u) - 0.5 * u.flatten(1).pow(2).sum(dim=1)


def joint_prior_log_density(neg_energy_of_u: Callable[[Tensor], Tensor]) -> Density:
    """The Joint-EBM prior in u-space: ``log p(u) = F(T(u)) - |u|^2 / 2`` (DESIGN §3, Joint scheme).

    Args:
        neg_energy_of_u: u ``[B, D]`` -> ``F(T(u))`` ``[B]`` (the caller composes the backbone's
            map ``T`` with the negative-energy network).

    Returns:
        A :class:`Density` u ``[B, D]`` -> ``[B]`` without inputs (keyed by ``neg_energy_of_u``).
    """
    return Density(fn=functools.partial(_joint_log_density, neg_energy_of_u), key=("joint", neg_energy_of_u))


def sample_joint_prior(
    neg_energy_of_u: Callable[[Tensor], Tensor],
    u_init: Tensor,
    n_steps: int,
    step_size: float | Tensor,
    generator: Noise,
    add_noise: bool = True,
    runner: StepRunner = EAGER,
) -> tuple[Tensor, ChainStats]:
    """Short-run Langevin on the Joint-EBM prior ``F(T(u)) - |u|^2/2`` from ``u_init`` ``[B, D]``.

    The caller draws ``u_init`` (usually ``N(0, I)``; anchors: ``s = 0.4``, ``K = 40..60``).
    Returns ``(u_K [B, D], ChainStats)`` as :func:`langevin` (``runner`` as there).
    """
    return langevin(
        joint_prior_log_density(neg_energy_of_u),
        u_init,
        n_steps,
        step_size,
        generator,
        add_noise=add_noise,
        runner=runner,
    )
