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

from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

from hebmctl.noise import Noise, randn

__all__ = [
    "ChainStats",
    "LogDensity",
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
        return bool(
            torch.isfinite(self.log_density).all()
            and torch.isfinite(self.grad_norm).all()
            and torch.isfinite(self.step_size).all()
        )

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


def langevin(
    log_density: LogDensity,
    u_init: Tensor,
    n_steps: int,
    step_size: float | Tensor,
    generator: Noise,
    add_noise: bool = True,
) -> tuple[Tensor, ChainStats]:
    """Run ``n_steps`` of (unadjusted) Langevin dynamics on ``log_density``.

    Update (DESIGN §3): ``u <- u + (s^2/2) * grad_u log p(u) + s * eps``, ``eps ~ N(0, I)`` drawn
    with ``generator`` (one ``randn`` of u's shape per step, in step order).

    Gradients are taken w.r.t. u only (``torch.autograd.grad``): nothing is accumulated into the
    ``.grad`` of any model parameter. Works inside or outside ``torch.no_grad()`` (gradients are
    enabled internally). No graph is kept across steps; the returned u is detached.

    Args:
        log_density: callable, u ``[B, D]`` -> unnormalised ``log p(u)`` ``[B]``.
        u_init: initial state ``[B, D]`` (not modified).
        n_steps: K >= 0.
        step_size: ``s`` as a float, or a tensor ``[B]`` (one step size per example, e.g. the
            diffusion scheme's per-example level).
        generator: ``torch.Generator`` on u's device; the only source of randomness (or
            :class:`hebmctl.noise.NoiseRows`: u is a shard of a batch and gets its rows of the batch's draws).
        add_noise: False drops the ``s * eps`` term (deterministic gradient ascent; no draws).

    Returns:
        ``(u_K [B, D], ChainStats)`` with u_K detached, same dtype and device as ``u_init``.
    """
    if n_steps < 0:
        raise ValueError(f"n_steps must be >= 0, got {n_steps}")
    if u_init.dim() < 2:
        raise ValueError(f"u_init must have shape [B, D], got {tuple(u_init.shape)}")
    s = _per_example_step(step_size, u_init)
    half_s_sq = 0.5 * s * s
    s_mean = s.detach().mean()

    u = u_init.detach().clone()
    log_p_means: list[Tensor] = []
    grad_norm_means: list[Tensor] = []
    for _ in range(n_steps):
        with torch.enable_grad():
            u_req = u.detach().requires_grad_(True)
            log_p = log_density(u_req)
            if log_p.shape != (u.shape[0],):
                raise ValueError(
                    f"log_density must return shape [B]=[{u.shape[0]}], got {tuple(log_p.shape)}"
                )
            # grad_u log p(u): w.r.t. u only; parameters' .grad stay untouched.
            (grad,) = torch.autograd.grad(log_p.sum(), u_req)
        grad = grad.detach()
        log_p_means.append(log_p.detach().mean())
        grad_norm_means.append(grad.flatten(1).norm(dim=1).mean())
        # DESIGN §3: u <- u + (s^2/2) grad_u log p(u) + s eps
        u = u + half_s_sq * grad
        if add_noise:
            eps = randn(u.shape, generator, u.device, u.dtype)  # NoiseRows: this shard's rows of the batch's draw
            u = u + s * eps

    def _stack(xs: list[Tensor]) -> Tensor:
        if not xs:
            return torch.zeros(0, dtype=torch.float32)
        return torch.stack(xs).to(device="cpu", dtype=torch.float32)

    stats = ChainStats(
        log_density=_stack(log_p_means),
        grad_norm=_stack(grad_norm_means),
        step_size=s_mean.to(device="cpu", dtype=torch.float32).expand(n_steps).clone(),
    )
    return u.detach(), stats


def joint_prior_log_density(neg_energy_of_u: Callable[[Tensor], Tensor]) -> LogDensity:
    """The Joint-EBM prior in u-space: ``log p(u) = F(T(u)) - |u|^2 / 2`` (DESIGN §3, Joint scheme).

    Args:
        neg_energy_of_u: u ``[B, D]`` -> ``F(T(u))`` ``[B]`` (the caller composes the backbone's
            map ``T`` with the negative-energy network).

    Returns:
        A callable u ``[B, D]`` -> ``[B]``.
    """

    def log_density(u: Tensor) -> Tensor:
        return neg_energy_of_u(u) - 0.5 * u.flatten(1).pow(2).sum(dim=1)

    return log_density


def sample_joint_prior(
    neg_energy_of_u: Callable[[Tensor], Tensor],
    u_init: Tensor,
    n_steps: int,
    step_size: float | Tensor,
    generator: torch.Generator,
    add_noise: bool = True,
) -> tuple[Tensor, ChainStats]:
    """Short-run Langevin on the Joint-EBM prior ``F(T(u)) - |u|^2/2`` from ``u_init`` ``[B, D]``.

    The caller draws ``u_init`` (usually ``N(0, I)``; anchors: ``s = 0.4``, ``K = 40..60``).
    Returns ``(u_K [B, D], ChainStats)`` as :func:`langevin`.
    """
    return langevin(
        joint_prior_log_density(neg_energy_of_u),
        u_init,
        n_steps,
        step_size,
        generator,
        add_noise=add_noise,
    )
