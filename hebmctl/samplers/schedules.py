"""Diffusion schedules in u-space (DESIGN §3, "Diffusion scheme" and "Cooperative scheme").

Levels ``t = 0..T``; per level ``alpha_t^2 + sigma_t^2 = 1`` and the forward kernel is
``u_{t+1} = alpha_{t+1} u_t + sigma_{t+1} eps``. Level 0 is itself a (slightly) noised copy of the
data: ``u_t = alpha_cum[t] u_0 + sigma_cum[t] eps`` with ``alpha_cum = cumprod(alpha)`` INCLUDING
``alpha_0`` (as in the anchor code) and ``sigma_cum = sqrt(1 - alpha_cum^2)``.

All schedule arithmetic is done in float64 and stored as float32 tensors on the CPU; move them with
:meth:`DiffusionSchedule.to`. Pure functions: randomness only through the caller's generator.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from hebmctl.noise import Noise, randn

__all__ = [
    "DiffusionSchedule",
    "drl_boundaries",
    "drl_schedule",
    "cosine_schedule",
    "make_schedule",
    "anchor_step_sizes_sq",
    "forward_pairs",
    "forward_pairs_shared_noise",
]

_DRL_N_STEPS = 1000
_DRL_BETA_START = 1e-4
_DRL_BETA_END = 0.02


@dataclass(frozen=True)
class DiffusionSchedule:
    """A T-level diffusion schedule. All tensors are float32, shape ``[T+1]`` (levels 0..T).

    Attributes:
        alpha: per-level ``alpha_t``.
        sigma: per-level ``sigma_t``, ``alpha_t^2 + sigma_t^2 = 1``.
        alpha_cum: ``prod_{j<=t} alpha_j`` (includes ``alpha_0``).
        sigma_cum: ``sqrt(1 - alpha_cum^2)``.
        name: ``"drl"`` or ``"cosine"`` (recorded in manifests).
    """

    alpha: Tensor
    sigma: Tensor
    alpha_cum: Tensor
    sigma_cum: Tensor
    name: str

    def __post_init__(self) -> None:
        shapes = {
            k: tuple(getattr(self, k).shape) for k in ("alpha", "sigma", "alpha_cum", "sigma_cum")
        }
        first = shapes["alpha"]
        if len(first) != 1 or first[0] < 2 or any(s != first for s in shapes.values()):
            raise ValueError(f"schedule tensors must all have shape [T+1] with T >= 1; got {shapes}")

    @property
    def num_levels(self) -> int:
        """T (the tensors hold T+1 levels, 0..T)."""
        return int(self.alpha.shape[0]) - 1

    @property
    def device(self) -> torch.device:
        return self.alpha.device

    def to(self, device: torch.device | str) -> "DiffusionSchedule":
        """A copy with every tensor on ``device``."""
        return DiffusionSchedule(
            alpha=self.alpha.to(device),
            sigma=self.sigma.to(device),
            alpha_cum=self.alpha_cum.to(device),
            sigma_cum=self.sigma_cum.to(device),
            name=self.name,
        )

    def to_dict(self) -> dict[str, Any]:
        """Plain Python values (for manifests): name, T and the four ``[T+1]`` lists."""
        return {
            "name": self.name,
            "num_levels": self.num_levels,
            "alpha": self.alpha.tolist(),
            "sigma": self.sigma.tolist(),
            "alpha_cum": self.alpha_cum.tolist(),
            "sigma_cum": self.sigma_cum.tolist(),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "DiffusionSchedule":
        """Inverse of :meth:`to_dict` (``num_levels`` is checked against the list lengths)."""
        sched = cls(
            alpha=torch.tensor(d["alpha"], dtype=torch.float32),
            sigma=torch.tensor(d["sigma"], dtype=torch.float32),
            alpha_cum=torch.tensor(d["alpha_cum"], dtype=torch.float32),
            sigma_cum=torch.tensor(d["sigma_cum"], dtype=torch.float32),
            name=str(d["name"]),
        )
        if "num_levels" in d and int(d["num_levels"]) != sched.num_levels:
            raise ValueError(
                f"num_levels={d['num_levels']} does not match the lists' length T+1={sched.num_levels + 1}"
            )
        return sched


def _from_alpha64(alpha: Tensor, name: str, sigma_cum: Tensor | None = None) -> DiffusionSchedule:
    """Build a schedule from float64 per-level alphas ``[T+1]`` (sigma, cumulative terms derived)."""
    alpha = alpha.to(torch.float64)
    sigma = torch.sqrt(torch.clamp(1.0 - alpha * alpha, min=0.0))
    alpha_cum = torch.cumprod(alpha, dim=0)
    if sigma_cum is None:
        sigma_cum = torch.sqrt(torch.clamp(1.0 - alpha_cum * alpha_cum, min=0.0))
    f32 = torch.float32
    return DiffusionSchedule(
        alpha=alpha.to(f32),
        sigma=sigma.to(f32),
        alpha_cum=alpha_cum.to(f32),
        sigma_cum=sigma_cum.to(torch.float64).to(f32),
        name=name,
    )


def drl_boundaries(T: int) -> list[int]:
    """Segment boundaries into the 1000-step linear-beta process, ``T+1`` increasing indices.

    DESIGN §3: ``i * (1000 // (2 (T-1)))`` for ``i < T``, then 999; T = 3 -> ``[0, 250, 500, 999]``,
    T = 6 -> ``[0, 100, 200, 300, 400, 500, 999]``.

    Interpretation for small / large T:
      * T = 1: the formula divides by zero; we use ``[0, 999]`` (level 1 = the whole process).
      * T = 2: the formula applies as written: ``[0, 500, 999]``.
      * T > 501: ``1000 // (2 (T-1)) == 0`` gives empty segments (alpha = 1, sigma = 0, a
        singular kernel), so ValueError.
    """
    if T < 1:
        raise ValueError(f"the diffusion needs T >= 1 levels, got T={T}")
    if T == 1:
        return [0, _DRL_N_STEPS - 1]
    stride = _DRL_N_STEPS // (2 * (T - 1))
    if stride == 0:
        raise ValueError(
            f"drl schedule supports T <= 501 (1000 // (2 (T-1)) must be >= 1); got T={T}"
        )
    return [i * stride for i in range(T)] + [_DRL_N_STEPS - 1]


def drl_schedule(T: int) -> DiffusionSchedule:
    """The anchor ("drl") schedule of Diff-EBM (DESIGN §3).

    Linear betas ``1e-4 .. 0.02`` over 1000 steps (float64), boundaries ``b`` from
    :func:`drl_boundaries` (T = 1 uses ``[0, 999]``; see there), then
    ``alpha_0 = sqrt(1 - beta_0)`` (the product over the first boundary index alone) and, for
    ``t >= 1``, ``alpha_t = prod_{j in (b_{t-1}, b_t]} sqrt(1 - beta_j)``.

    For T = 3: ``alpha = [0.99995, 0.72213, 0.38627, 0.02278]``,
    ``sigma = [0.0100, 0.6918, 0.9224, 0.9997]``.

    Raises:
        ValueError: T < 1 or T > 501.
    """
    bounds = drl_boundaries(T)
    betas = torch.linspace(_DRL_BETA_START, _DRL_BETA_END, _DRL_N_STEPS, dtype=torch.float64)
    sqrt_one_minus_beta = torch.sqrt(1.0 - betas)
    alphas = [sqrt_one_minus_beta[bounds[0]]]
    for t in range(1, T + 1):
        alphas.append(torch.prod(sqrt_one_minus_beta[bounds[t - 1] + 1 : bounds[t] + 1]))
    return _from_alpha64(torch.stack(alphas), name="drl")


def cosine_schedule(T: int, logsnr_min: float = -20.0, logsnr_max: float = 20.0) -> DiffusionSchedule:
    """CDRL's cosine log-SNR schedule, mapped onto per-level alphas (DESIGN §3).

    ``logsnr(t) = -2 log tan(a t + b)`` with ``b = arctan(exp(-logsnr_max / 2))``,
    ``a = arctan(exp(-logsnr_min / 2)) - b``, evaluated at ``t_i = i / T`` for ``i = 0..T``
    (so ``logsnr(t_0) = logsnr_max`` and ``logsnr(t_T) = logsnr_min``).

    Mapping onto this module's convention: ``alphabar_i = sigmoid(logsnr_i)`` is the *squared*
    cumulative alpha, i.e. ``alpha_cum_i = sqrt(sigmoid(logsnr_i))`` and
    ``sigma_cum_i = sqrt(sigmoid(-logsnr_i))`` (= ``sqrt(1 - alpha_cum_i^2)``, computed this way
    so that the tiny ``sigma_cum_0`` stays accurate); per-level ``alpha_0 = alpha_cum_0``,
    ``alpha_i = alpha_cum_i / alpha_cum_{i-1}``, ``sigma_i = sqrt(1 - alpha_i^2)``.

    Note: with the default ``logsnr_max = 20``, ``alpha_cum_0 = 1 - 1e-9`` rounds to 1.0 in
    float32, while ``sigma_cum_0 = 4.5e-5`` is kept exactly.

    Raises:
        ValueError: T < 1 or ``logsnr_min >= logsnr_max``.
    """
    if T < 1:
        raise ValueError(f"the diffusion needs T >= 1 levels, got T={T}")
    if not logsnr_min < logsnr_max:
        raise ValueError(f"need logsnr_min < logsnr_max, got {logsnr_min} and {logsnr_max}")
    b = math.atan(math.exp(-0.5 * logsnr_max))
    a = math.atan(math.exp(-0.5 * logsnr_min)) - b
    tt = torch.arange(T + 1, dtype=torch.float64) / T
    logsnr = -2.0 * torch.log(torch.tan(a * tt + b))
    alpha_cum = torch.sqrt(torch.sigmoid(logsnr))
    sigma_cum = torch.sqrt(torch.sigmoid(-logsnr))
    alpha = torch.cat([alpha_cum[:1], alpha_cum[1:] / alpha_cum[:-1]])
    return _from_alpha64(alpha, name="cosine", sigma_cum=sigma_cum)


def make_schedule(name: str, T: int, **kwargs: float) -> DiffusionSchedule:
    """Schedule by name: ``"drl"`` (:func:`drl_schedule`) or ``"cosine"`` (:func:`cosine_schedule`)."""
    if name == "drl":
        if kwargs:
            raise ValueError(f"the drl schedule takes no options, got {sorted(kwargs)}")
        return drl_schedule(T)
    if name == "cosine":
        return cosine_schedule(T, **kwargs)
    raise ValueError(f"unknown diffusion schedule {name!r}; expected 'drl' or 'cosine'")


def anchor_step_sizes_sq(schedule: DiffusionSchedule, b2: float = 3e-5) -> Tensor:
    """Anchor Langevin step sizes, squared, one per conditional EBM: ``[T]`` float32.

    DESIGN §3: ``s_t^2 = (sigma_cum[t] / sigma_cum[0]) * b2 * sigma[t+1]^2`` for ``t = 0..T-1``
    (``b2 = 3e-5`` is the CIFAR-10 anchor). Computed in float64, returned on the schedule's device.
    """
    if b2 <= 0:
        raise ValueError(f"b2 must be > 0, got {b2}")
    sigma_cum = schedule.sigma_cum.to(torch.float64)
    sigma = schedule.sigma.to(torch.float64)
    s_sq = (sigma_cum[:-1] / sigma_cum[0]) * b2 * sigma[1:] ** 2
    return s_sq.to(torch.float32)


def _gather(values: Tensor, t: Tensor, like: Tensor) -> Tensor:
    """``values[t]`` for a per-example level ``t [B]``, shaped ``[B, 1, ..., 1]`` like ``like``."""
    v = values.to(device=like.device, dtype=like.dtype)[t.to(like.device)]
    return v.reshape((like.shape[0],) + (1,) * (like.dim() - 1))


def _check_levels(u0: Tensor, t: Tensor, schedule: DiffusionSchedule) -> None:
    if t.dtype not in (torch.int64, torch.int32) or t.shape != (u0.shape[0],):
        raise ValueError(
            f"t must be an integer tensor of shape [B]=[{u0.shape[0]}], got {t.dtype} {tuple(t.shape)}"
        )


def forward_pairs(
    u0: Tensor, t: Tensor, schedule: DiffusionSchedule, generator: Noise
) -> tuple[Tensor, Tensor]:
    """Draw ``(u_t, u_{t+1})`` from the forward process (the anchor's ``q_sample_pairs``).

    ``u_t = alpha_cum[t] u_0 + sigma_cum[t] eps1``, then
    ``u_{t+1} = alpha[t+1] u_t + sigma[t+1] eps2`` (DESIGN §3, Diffusion scheme).

    Args:
        u0: clean latents ``[B, D]``.
        t: LongTensor ``[B]`` with levels in ``0..T-1``.
        schedule: the diffusion schedule.
        generator: draws ``eps1`` then ``eps2``, each of u0's shape.

    Returns:
        ``(u_t [B, D], u_{t+1} [B, D])``.
    """
    _check_levels(u0, t, schedule)
    eps1 = randn(u0.shape, generator, u0.device, u0.dtype)
    eps2 = randn(u0.shape, generator, u0.device, u0.dtype)
    u_t = _gather(schedule.alpha_cum, t, u0) * u0 + _gather(schedule.sigma_cum, t, u0) * eps1
    u_tp1 = _gather(schedule.alpha, t + 1, u0) * u_t + _gather(schedule.sigma, t + 1, u0) * eps2
    return u_t, u_tp1


def forward_pairs_shared_noise(
    u0: Tensor, t: Tensor, schedule: DiffusionSchedule, generator: Noise
) -> tuple[Tensor, Tensor]:
    """CDRL's variance-reduced pairs: one ``eps`` for both levels (DESIGN §3, Cooperative scheme).

    ``u_t = alpha_cum[t] u_0 + sigma_cum[t] eps``, ``u_{t+1} = alpha_cum[t+1] u_0 + sigma_cum[t+1] eps``.
    Each marginal matches :func:`forward_pairs`; the pair is not drawn from the forward kernel.

    Args:
        u0: ``[B, D]``; t: LongTensor ``[B]`` in ``0..T-1``; generator draws one ``eps`` of u0's shape.

    Returns:
        ``(u_t [B, D], u_{t+1} [B, D])``.
    """
    _check_levels(u0, t, schedule)
    eps = randn(u0.shape, generator, u0.device, u0.dtype)
    u_t = _gather(schedule.alpha_cum, t, u0) * u0 + _gather(schedule.sigma_cum, t, u0) * eps
    u_tp1 = _gather(schedule.alpha_cum, t + 1, u0) * u0 + _gather(schedule.sigma_cum, t + 1, u0) * eps
    return u_t, u_tp1
