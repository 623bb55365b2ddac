"""CUDA-graph capture of the Langevin step (issue 13; DESIGN §8 "not launch-bound").

One Langevin step of a small energy network is a few hundred tiny kernels (forward, backward,
update), so on a GPU the loop is bound by kernel launches, not arithmetic. :class:`LangevinGraphs`
records :func:`hebmctl.samplers.langevin.langevin_step` once per (density, shapes) as a CUDA graph
and replays it: per step one noise draw (``normal_`` with the chain's generator, outside the
graph, so the random stream is exactly the eager loop's), one replay, one copy of the step's
statistics into the chain's ``[K, 2]`` buffer; no host sync until the chain ends.

The captured step is a thin wrapper: :class:`StaticStep` holds static buffers (state, noise, the
density's inputs, step sizes) and runs the *same* step function on them; ``capture=False`` runs it
eagerly on those buffers instead of replaying a graph. That path runs on the CPU and is tested to
give bitwise the numbers of the eager loop (``tests/samplers/test_graphs.py``), so the only lines
the CPU cannot exercise are the capture and the replay.

Only :class:`~hebmctl.samplers.langevin.Density` objects with a key are captured (their tensors
are explicit inputs); a plain closure runs eagerly. The energy's parameters are read in place, so
optimizer steps, EMA and checkpoint loads (all in-place) are seen by later replays.

Modes (``--compile``): ``off`` eager; ``auto`` graphs on CUDA, eager elsewhere; ``on`` graphs, an
error without CUDA (an explicit request that cannot be honoured should not silently change).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
from torch import Tensor

from hebmctl.errors import ConfigError
from hebmctl.noise import Noise
from hebmctl.samplers.langevin import EAGER, Density, StepRunner, draw_noise, langevin_step

__all__ = ["CaptureMode", "CaptureUnavailable", "LangevinGraphs", "StaticStep", "capture_enabled", "step_runner"]

CaptureMode = Literal["auto", "on", "off"]
WARMUP_STEPS = 3
"""Eager runs on a side stream before capture (lazy cuBLAS / autograd initialisation, as torch's docs ask)."""


class CaptureUnavailable(ConfigError):
    """`--compile on` on a device without CUDA graphs."""


class StaticStep:
    """Static buffers of one chain shape and the step on them: u ``[B, D]``, eps ``[B, D]`` (or None), the
    density's inputs, s and s^2/2 ``[B, 1]``; ``run()`` computes (u_next ``[B, D]``, stats ``[2]``) from them,
    replaying a CUDA graph when captured, else calling :func:`langevin_step` eagerly (same function)."""

    def __init__(self, density: Density, u: Tensor, s: Tensor, half_s_sq: Tensor, add_noise: bool, capture: bool,
                 pool: object | None = None) -> None:
        self.fn = density.fn
        self.u = u.detach().clone()
        self.eps = torch.zeros_like(self.u) if add_noise else None
        self.inputs = tuple(x.detach().clone() for x in density.inputs)
        self.s, self.half_s_sq = s.detach().clone(), half_s_sq.detach().clone()
        self.u_next, self.stats = self.u, torch.zeros(2, dtype=u.dtype, device=u.device)
        self.graph: torch.cuda.CUDAGraph | None = None
        if capture:
            self._capture(pool)

    def _eager(self) -> None:
        self.u_next, self.stats = langevin_step(self.fn, self.u, self.eps, self.s, self.half_s_sq, self.inputs)

    def _capture(self, pool: object | None) -> None:
        """Warm up on a side stream, then record one step; afterwards u_next and stats are the graph's outputs."""
        side = torch.cuda.Stream(device=self.u.device)
        side.wait_stream(torch.cuda.current_stream(self.u.device))
        with torch.cuda.stream(side):
            for _ in range(WARMUP_STEPS):
                self._eager()
        torch.cuda.current_stream(self.u.device).wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph, pool=pool):
            self._eager()

    def run(self) -> None:
        """One step from the buffers' current contents (outputs in u_next, stats)."""
        if self.graph is not None:
            self.graph.replay()
        else:
            self._eager()

    def load(self, density: Density, u_init: Tensor, s: Tensor, half_s_sq: Tensor) -> None:
        """Refill the buffers for a new chain (device copies, no sync)."""
        self.u.copy_(u_init)
        for buffer, value in zip(self.inputs, density.inputs, strict=True):
            buffer.copy_(value)
        self.s.copy_(s)
        self.half_s_sq.copy_(half_s_sq)

    def chain(self, n_steps: int, fill_noise: Callable[[Tensor], object]) -> tuple[Tensor, Tensor]:
        """K steps from the loaded state: (u_K ``[B, D]``, stats ``[K, 2]``), both fresh tensors; ``fill_noise(eps)``
        draws each step's noise into the eps buffer in place (outside the graph)."""
        rows = torch.empty((n_steps, 2), dtype=self.u.dtype, device=self.u.device)
        for k in range(n_steps):
            if self.eps is not None:
                fill_noise(self.eps)
            self.run()
            self.u.copy_(self.u_next)
            rows[k].copy_(self.stats)
        return self.u.clone(), rows


class LangevinGraphs:
    """A :class:`~hebmctl.samplers.langevin.StepRunner` that keeps one :class:`StaticStep` per (density key, shapes,
    dtypes, device, noise on/off) and runs chains on it; ``capture=False`` is the same machinery without CUDA
    graphs (the CPU-testable path). Densities without a key run eagerly."""

    def __init__(self, capture: bool) -> None:
        self.capture = capture
        self.steps: dict[tuple, StaticStep] = {}
        self.pool = torch.cuda.graph_pool_handle() if capture else None

    def chain(self, density: Density, u_init: Tensor, n_steps: int, s: Tensor, half_s_sq: Tensor,
              generator: Noise, add_noise: bool) -> tuple[Tensor, Tensor]:
        if density.key is None or n_steps == 0:
            return EAGER.chain(density, u_init, n_steps, s, half_s_sq, generator, add_noise)
        key = (density.key, add_noise, _signature(u_init), _signature(s), *(_signature(x) for x in density.inputs))
        step = self.steps.get(key)
        if step is None:
            step = self.steps[key] = StaticStep(density, u_init, s, half_s_sq, add_noise, self.capture, self.pool)
        step.load(density, u_init, s, half_s_sq)
        # eps.normal_(generator) = torch.randn(u.shape, generator=...): the eager loop's draw, same stream; a shard of a
        # batch (NoiseRows, several processes) copies in its rows of the batch's draw, as draw_noise gives them
        if isinstance(generator, torch.Generator):
            return step.chain(n_steps, lambda eps: eps.normal_(generator=generator))
        return step.chain(n_steps, lambda eps: eps.copy_(draw_noise(eps, generator)))


def _signature(x: Tensor) -> tuple:
    return tuple(x.shape), x.dtype, x.device


def capture_enabled(mode: CaptureMode, device: torch.device) -> bool:
    """Whether `--compile MODE` captures on `device`: off never, auto on CUDA only, on always (CaptureUnavailable
    without CUDA)."""
    if mode == "off" or (mode == "auto" and device.type != "cuda"):
        return False
    if device.type != "cuda":
        raise CaptureUnavailable(f"--compile on captures the Langevin step in CUDA graphs, but the device is {device}. "
                                 "Use --compile auto (graphs on CUDA, the eager loop elsewhere) or --compile off.")
    return True


def step_runner(mode: CaptureMode, device: torch.device) -> StepRunner:
    """The runner for `--compile MODE` on `device`: CUDA graphs where `capture_enabled`, else the eager loop."""
    return LangevinGraphs(capture=True) if capture_enabled(mode, device) else EAGER
