"""Several processes (torchrun): the only module that knows about ranks (DESIGN §2, §8).

A stage that runs under `torchrun --nproc-per-node N hebmctl STAGE ...` calls `init(device)` first;
it joins the process group that torchrun's environment describes (`RANK`, `WORLD_SIZE`,
`LOCAL_RANK`, `MASTER_ADDR`, `MASTER_PORT`): NCCL on CUDA (each rank on `cuda:LOCAL_RANK`), gloo on
the CPU. Without torchrun (`WORLD_SIZE` unset or 1) nothing here creates a process group and every
helper is the one-process operation itself (`batch_mean(t)` is `t.mean(0)`), so a single process
computes exactly the numbers it computed before, at the same speed.

The rules every helper keeps:
- **Row shards.** A batch (or a data split) of n rows is cut into contiguous shards, one per rank,
  in rank order (`shard`); gathering the shards in rank order gives back the one-process order.
- **Global statistics.** A loss built from means over the batch is computed from the global batch's
  sums (`global_sum`, differentiable): every rank computes the same loss value, and its backward
  reaches only the rank's own rows. The parameter gradients of all ranks are then summed
  (`sum_gradients`), which gives the one-process gradient up to float summation order.
- **One writer.** Rank 0 decides and writes (`main_decides`); the others wait for its decision.
- **No silent hang.** Every collective has a timeout (`HEBMCTL_DIST_TIMEOUT_S`, default 1800 s); a
  peer that died or timed out becomes a `DistributedError` (a one-paragraph message, exit code 2).
"""

from __future__ import annotations

import atexit
import contextlib
import datetime as dt
import json
import os
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import numpy as np
import torch
import torch.distributed as tdist

from hebmctl import errors
from hebmctl.errors import HebmctlError

TIMEOUT_ENV = "HEBMCTL_DIST_TIMEOUT_S"
DEFAULT_TIMEOUT_S = 1800.0
"""Longest wait at a collective; rank 0 may write a checkpoint or join cache parts while the others wait."""
DDP_STAGES = ("pretrain", "cache-latents", "train-prior", "sample", "eval fid")
"""Stages that run with several processes (the others refuse them with a clear message)."""
_stage_joined = False
"""True once the stage now running called `init`; cleared when any writing stage starts (`stage_starts`),
so a stage that never asked for several processes (e.g. in `pipeline`, after pretrain) refuses them."""


class DistributedError(HebmctlError):
    """A collective failed: another process died, or stopped answering within the timeout."""


# ---- who am I ---------------------------------------------------------------------------------
def rank() -> int:
    """This process's rank (0 without torchrun)."""
    return int(os.environ.get("RANK", "0"))


def world_size() -> int:
    """Number of processes (1 without torchrun)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def is_main() -> bool:
    """True on the process that writes files and draws progress bars (rank 0)."""
    return rank() == 0


def timeout_s() -> float:
    try:
        return float(os.environ.get(TIMEOUT_ENV, DEFAULT_TIMEOUT_S))
    except ValueError as exc:
        raise HebmctlError(f"{TIMEOUT_ENV}={os.environ[TIMEOUT_ENV]!r} is not a number of seconds.") from exc


# ---- joining the group ------------------------------------------------------------------------
def init(device: torch.device) -> torch.device:
    """Join torchrun's process group (once per process); returns the device this rank computes on.

    One process: nothing happens and `device` is returned as it is. Several: gloo for a CPU device,
    NCCL for CUDA, where a device without an index becomes `cuda:LOCAL_RANK`.
    """
    global _stage_joined
    if world_size() == 1:
        return device
    _stage_joined = True
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", local_rank())
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if not tdist.is_initialized():
        _import_modules_that_capture_the_group()
        backend = "nccl" if device.type == "cuda" else "gloo"
        with _collective("joining the process group (torchrun rendezvous)"):
            tdist.init_process_group(backend, timeout=dt.timedelta(seconds=timeout_s()))
        atexit.register(_leave)
    return device


def _import_modules_that_capture_the_group() -> None:
    """Import, before the group exists, the torch modules that bind `group.WORLD` at import time.

    `torch.distributed.nn.functional` uses `group=group.WORLD` as default arguments. Imported after
    `init_process_group` (the first optimizer imports it through torch._dynamo), those defaults keep
    the group object alive after `destroy_process_group`, so gloo's worker threads run on into the
    interpreter's shutdown; one of them then releasing a tensor (it needs the GIL) aborts the process
    ("terminate called without an active exception", SIGABRT), at random, after a successful run.
    Imported first, the defaults are None and `_leave` really ends the group.
    """
    import torch.distributed.nn  # noqa: F401


def _leave() -> None:
    if tdist.is_initialized():
        tdist.destroy_process_group()


def stage_starts() -> None:
    """A writing stage starts (`io.output.writes_artifact`): it runs with several processes only if it calls `init`."""
    global _stage_joined
    _stage_joined = False


def _require_group() -> None:
    if not (_stage_joined and tdist.is_initialized()):
        raise HebmctlError(
            f"This command was started as {world_size()} processes (torchrun), but only {', '.join(DDP_STAGES)} run with several "
            "processes so far. Run it as one process (without torchrun, or with --nproc-per-node 1)."
        )


def _comm_device() -> torch.device:
    """Where collective buffers live: the rank's GPU for NCCL, else the CPU."""
    if tdist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


@contextlib.contextmanager
def _collective(what: str) -> Iterator[None]:
    """Turn a failed or timed-out collective into a DistributedError that says what to do."""
    try:
        yield
    except (RuntimeError, ValueError) as exc:  # DistBackendError, DistNetworkError and gloo's errors are RuntimeErrors
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DistributedError(
            f"Rank {rank()} of {world_size()}: {what} failed ({first[:300]}). Another process has most likely died or stopped "
            f"answering for {timeout_s():.0f} s ({TIMEOUT_ENV}); see its log above. Every process stops here; what was "
            "checkpointed is kept: re-run the same command (with any number of processes) to continue."
        ) from exc


# ---- splitting rows ---------------------------------------------------------------------------
def shards(n: int, batch: int = 1) -> list[tuple[int, int]]:
    """Every rank's rows `[start, stop)` of n rows, in rank order: contiguous, made of whole batches of
    `batch` rows (the last batch may be short), the first ranks taking at most one batch more; a
    rank may get none (start == stop) when there are fewer batches than ranks."""
    per, extra = divmod(-(-n // batch), world_size())
    bounds = [r * per + min(r, extra) for r in range(world_size() + 1)]
    return [(min(a * batch, n), min(b * batch, n)) for a, b in zip(bounds, bounds[1:])]


def shard(n: int, batch: int = 1) -> tuple[int, int]:
    """This rank's rows `[start, stop)` of n rows (see `shards`); `(0, n)` in one process."""
    return shards(n, batch)[rank()]


# ---- collectives ------------------------------------------------------------------------------
class _GlobalSum(torch.autograd.Function):
    """Sum over ranks; the backward is the identity, because every rank computes the same loss from
    the sum and its backward must reach only the rank's own share (the shares' gradients are summed
    by `sum_gradients`)."""

    @staticmethod
    def forward(ctx: Any, tensor: torch.Tensor) -> torch.Tensor:
        total = tensor.detach().to(_comm_device(), copy=True)
        with _collective("an all_reduce of batch statistics"):
            tdist.all_reduce(total)
        return total.to(tensor.device)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        return grad


def global_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Elementwise sum of `tensor` over the ranks (differentiable, see `_GlobalSum`); itself in one process."""
    if world_size() == 1:
        return tensor
    _require_group()
    return _GlobalSum.apply(tensor)


def _sum_and_count(total: torch.Tensor, count: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum over ranks of `total`, sum over ranks of `count`) in one all_reduce, differentiable in `total`."""
    both = global_sum(torch.cat([total.reshape(-1), total.new_tensor([float(count)])]))
    return both[:-1].view_as(total), both[-1]


def batch_mean(tensor: torch.Tensor) -> torch.Tensor:
    """Mean over the first axis of the global batch: `[b, ...]` (this rank's rows) -> `[...]`; `tensor.mean(0)` in one process."""
    if world_size() == 1:
        return tensor.mean(0)
    total, rows = _sum_and_count(tensor.sum(0), tensor.shape[0])
    return total / rows


def global_mean(tensor: torch.Tensor) -> torch.Tensor:
    """Mean over every element of the global batch: `[b, ...]` -> scalar; `tensor.mean()` in one process."""
    if world_size() == 1:
        return tensor.mean()
    total, count = _sum_and_count(tensor.sum(), tensor.numel())
    return total / count


def mean_of_shards(means: torch.Tensor, rows: int) -> torch.Tensor:
    """The global batch's means `[k]` from this rank's means `[k]` over its `rows` rows: the shards' means weighted by
    their rows; `means` itself in one process. Differentiable: each rank's backward reaches its own means with
    weight rows / (global rows), so `sum_gradients` then gives the gradient of the global mean. A non-finite value
    on any rank makes that entry non-finite on every rank, so every rank takes the same decision from it."""
    if world_size() == 1:
        return means
    total, count = _sum_and_count(means * rows, rows)
    return total / count


def sum_gradients(parameters: Iterable[torch.nn.Parameter]) -> None:
    """Sum the `.grad` of every parameter over the ranks, in one flat buffer (one all_reduce per step).

    Parameters without a gradient are left alone (they have none on any rank: every rank runs the same graph).
    """
    if world_size() == 1:
        return
    _require_group()
    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    with _collective("the all_reduce of gradients"):
        tdist.all_reduce(flat)
    offset = 0
    for g in grads:
        g.copy_(flat[offset : offset + g.numel()].view_as(g))
        offset += g.numel()


def barrier(what: str) -> None:
    """Wait until every rank gets here (nothing in one process)."""
    if world_size() == 1:
        return
    _require_group()
    with _collective(f"waiting for every process ({what})"):
        tdist.barrier()


def all_gather_rows(array: np.ndarray) -> np.ndarray:
    """Concatenate every rank's `[n_r, ...]` array in rank order (n_r may differ, even be 0) -> `[sum n_r, ...]`."""
    if world_size() == 1:
        return array
    _require_group()
    device = _comm_device()
    local = torch.from_numpy(np.ascontiguousarray(array)).to(device)
    with _collective("an all_gather of rows"):
        sizes = [torch.zeros(1, dtype=torch.int64, device=device) for _ in range(world_size())]
        tdist.all_gather(sizes, torch.tensor([local.shape[0]], dtype=torch.int64, device=device))
        longest = max(int(s) for s in sizes)
        padded = torch.zeros((longest, *local.shape[1:]), dtype=local.dtype, device=device)
        padded[: local.shape[0]] = local
        parts = [torch.empty_like(padded) for _ in range(world_size())]
        tdist.all_gather(parts, padded)
    return torch.cat([part[: int(size)] for part, size in zip(parts, sizes)]).cpu().numpy()


def broadcast_json(value: Any) -> Any:
    """Rank 0's JSON-able `value` on every rank (sent as UTF-8 bytes; nothing is pickled)."""
    if world_size() == 1:
        return value
    _require_group()
    device = _comm_device()
    data = json.dumps(value).encode("utf-8") if is_main() else b""
    with _collective("a broadcast from rank 0"):
        size = torch.tensor([len(data)], dtype=torch.int64, device=device)
        tdist.broadcast(size, src=0)
        buffer = torch.zeros(int(size), dtype=torch.uint8, device=device)
        if is_main():
            buffer.copy_(torch.frombuffer(bytearray(data), dtype=torch.uint8))
        tdist.broadcast(buffer, src=0)
    return json.loads(bytes(buffer.cpu().numpy()).decode("utf-8"))


def raise_first_error(error: HebmctlError | None) -> None:
    """After work that may fail on some ranks only (each passes its HebmctlError or None): raise on every rank the
    error of the lowest rank that had one (same class, its message prefixed by that rank), or return when none had;
    in one process, raise `error` itself. So rank 0, the one that prints, says why a peer stopped."""
    if world_size() == 1:
        if error is not None:
            raise error
        return
    _require_group()
    mine = {} if error is None else {"error": type(error).__name__, "message": f"Rank {rank()} of {world_size()}: {error}"}
    line = np.frombuffer((json.dumps(mine) + "\n").encode("utf-8"), dtype=np.uint8)  # json.dumps escapes newlines
    outcomes = [json.loads(text) for text in bytes(all_gather_rows(line)).decode("utf-8").splitlines()]
    first = next((outcome for outcome in outcomes if outcome), None)
    if first is None:
        return
    if error is not None and first["message"] == mine["message"]:
        raise type(error)(first["message"]) from error
    raise (getattr(errors, first["error"], None) or DistributedError)(first["message"])


def main_decides(decide: Callable[[], Any]) -> Any:
    """Run `decide()` on rank 0 only and return its JSON-able result on every rank.

    A HebmctlError on rank 0 is raised on every rank (same class, same message), so all processes stop
    with rank 0's reason instead of waiting for it; any other exception on rank 0 stops the others with
    a DistributedError.
    """
    if world_size() == 1:
        return decide()
    _require_group()  # before rank 0 touches anything
    outcome: dict[str, Any] = {}
    if is_main():
        try:
            outcome = {"value": decide()}
        except HebmctlError as exc:
            broadcast_json({"error": type(exc).__name__, "message": str(exc)})
            raise
        except BaseException as exc:
            broadcast_json({"error": "DistributedError", "message": f"Rank 0 failed ({type(exc).__name__}: {exc}); see its log."})
            raise
    outcome = broadcast_json(outcome)
    if "error" in outcome and not is_main():
        error_type = getattr(errors, outcome["error"], None) or DistributedError
        raise error_type(outcome["message"])
    return outcome["value"]
