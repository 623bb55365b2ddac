"""Process-level facts every stage needs: the device, whether this process is the writer.

No module-level state: everything is read from the environment when asked, so several
processes (torchrun) can run a stage; only rank 0 writes files and draws progress bars.
"""

from __future__ import annotations

import resource
from collections.abc import Iterator
from contextlib import contextmanager

import torch

from hebmctl import dist
from hebmctl.errors import HebmctlError


def resolve_device(name: str) -> torch.device:
    """'auto' -> CUDA when available, else CPU; anything else is passed to torch, checked."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise HebmctlError(f"Unknown device {name!r} ({exc}). Use 'auto', 'cpu', 'cuda' or 'cuda:N'.") from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        raise HebmctlError(f"Device {name!r} was asked for, but this torch build sees no CUDA GPU. Use --device cpu or auto.")
    return device


def rank() -> int:
    return dist.rank()


def is_main_process() -> bool:
    return dist.is_main()


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, in MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def peak_cuda_mb(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    return torch.cuda.max_memory_allocated(device) / 2**20


@contextmanager
def cuda_matmul_precision(device: torch.device, tf32: bool) -> Iterator[None]:
    """Inside the block, CUDA matmuls and convolutions use TF32 (10-bit mantissa) when `tf32`, else full fp32; the
    previous setting is restored after. Nothing changes on the CPU, which has no TF32."""
    if device.type != "cuda":
        yield
        return
    before = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = tf32
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before
