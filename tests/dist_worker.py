"""One rank of `tests/test_dist.py`'s two-process check of the collectives (run by tests.ddp_launch).

Writes `rank-<r>.json` into the folder given as the first argument: what this rank saw.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import torch

from hebmctl import dist
from hebmctl.errors import ArtifactError, DivergenceError, HebmctlError


def main(out: Path) -> None:
    dist.init(torch.device("cpu"))
    r = dist.rank()
    seen: dict = {"shard": dist.shard(10, 4)}
    # Unequal lengths: rank 0 sends 3 rows, rank 1 sends 0 (an empty shard is allowed).
    rows = np.arange(3 * 2, dtype=np.float64).reshape(3, 2) if r == 0 else np.zeros((0, 2))
    seen["gathered"] = dist.all_gather_rows(rows).tolist()
    # The differentiable global mean: rank 0 holds rows [1, 2], rank 1 holds [3]; mean 2, d mean / d x_i = 1/3 on each rank's rows.
    x = torch.tensor([1.0, 2.0] if r == 0 else [3.0], requires_grad=True)
    mean = dist.batch_mean(x)
    mean.backward()
    seen["mean"], seen["grad"] = float(mean), x.grad.tolist()
    param = torch.nn.Parameter(torch.zeros(2))
    param.grad = torch.tensor([1.0, 2.0]) * (r + 1)
    dist.sum_gradients([param])
    seen["summed_grad"] = param.grad.tolist()
    seen["broadcast"] = dist.broadcast_json({"from": r})
    seen["decided"] = dist.main_decides(lambda: "rank 0's choice")
    try:
        dist.main_decides(lambda: (_ for _ in ()).throw(ArtifactError("the folder is taken")))
    except ArtifactError as exc:
        seen["error"] = str(exc)
    dist.raise_first_error(None)  # no rank failed: nothing happens
    try:  # rank 1 alone fails: every rank raises its error
        dist.raise_first_error(DivergenceError("the chains diverged") if r == 1 else None)
    except DivergenceError as exc:
        seen["first_error"] = str(exc)
    dist.barrier("the end of the test")
    dist.stage_starts()  # the next stage (e.g. in `pipeline`) does not call init: it must refuse, group or not
    try:
        dist.main_decides(lambda: "must not run")
    except HebmctlError as exc:
        seen["next_stage"] = str(exc)
    torch.optim.Adam([param])  # the first optimizer imports torch._dynamo, and with it modules that bind the group at import
    dist._leave()  # what the exit handler does: gloo's worker threads must be gone before the interpreter shuts down
    seen["threads_after_leave"] = _gloo_thread_names()
    (out / f"rank-{r}.json").write_text(json.dumps(seen))


def _gloo_thread_names() -> list[str] | None:
    """Names of this process's threads that belong to gloo (None where /proc/self/task is not there)."""
    tasks = Path("/proc/self/task")
    if not tasks.is_dir():
        return None
    names = [(task / "comm").read_text().strip() for task in tasks.iterdir()]
    return sorted(name for name in names if "gloo" in name)


if __name__ == "__main__":
    main(Path(sys.argv[1]))
