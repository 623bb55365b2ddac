"""Process-level facts every stage needs: the device, whether this process is the writer.

No module-level state: everything is read from the environment when asked, so several
processes (torchrun) can run a stage; only rank 0 writes files and draws progress bars.
"""

from __future__ import annotations

import resource

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
