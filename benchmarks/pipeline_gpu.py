"""Issue 13's whole-pipeline time on a GPU machine: `hebmctl pipeline` on a config, timed stage by stage.

    python benchmarks/pipeline_gpu.py --config benchmarks/pipeline_gpu_fashion.toml [--inception-weights PATH]
        [--out benchmarks/results/pipeline_gpu_fashion.json]

The same stages and defaults as benchmarks/reproduce.py (pretrain, cache-latents, the diffusion prior, FID at
N = 5,000 for the Gaussian prior, the reconstructions and the diffusion prior); the run folder is started afresh.
Where no FID weights file is found (the 95 MB file does not travel to a borrowed GPU machine), the FID network is
the timing stand-in of benchmarks/_stand_in_inception.py: the stages' times are real, the FID values are not, and
the result replaces them by null and says why. Every stage's wall time comes from its own manifest or the
pipeline's clock; `pipeline_wall_s` is the target's number.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import signal
import time
from pathlib import Path

from _common import RESULTS, machine
from _stand_in_inception import STAND_IN_NOTE, write_stand_in
from reproduce import collect

from hebmctl.errors import HebmctlError
from hebmctl.metrics.fid import ENV_VAR, resolve_inception_weights
from hebmctl.stages import pipeline

SCRATCH_MARK = ".pipeline_gpu_scratch"
"""A file in every run folder this benchmark made: only such a folder is ever deleted."""


def fresh_run(run: Path) -> None:
    """Start `run` empty, so that every stage runs and none is found up to date. A folder this benchmark made before
    is replaced; any other existing folder is refused, never deleted (it may hold someone's artifacts)."""
    if run.exists():
        if not (run / SCRATCH_MARK).is_file():
            raise SystemExit(f"pipeline_gpu.py times a fresh run, but {run} exists and was not made by this benchmark; "
                             "point the config's `run` at a new folder, or remove it yourself.")
        shutil.rmtree(run)
    run.mkdir(parents=True)
    (run / SCRATCH_MARK).write_text("made by benchmarks/pipeline_gpu.py; deleted by its next run\n")


def fid_network(explicit: str | None, root: Path) -> tuple[str, bool]:
    """(path of the FID network to use, whether it is the stand-in)."""
    try:
        return str(resolve_inception_weights(explicit)), False
    except HebmctlError:
        return str(write_stand_in(root / "stand_in_inception.pt")), True


def finish_times(run: Path, started_at: dt.datetime) -> dict[str, float]:
    """Seconds from the pipeline's start to each artifact's manifest (its commit marker; 1 s resolution), in order."""
    times = {}
    for manifest in run.glob("**/manifest.json"):
        created = dt.datetime.fromisoformat(json.loads(manifest.read_text())["created_at"])
        times[str(manifest.parent.relative_to(run))] = round((created - started_at).total_seconds(), 1)
    return dict(sorted(times.items(), key=lambda item: item[1]))


def hide_fid_values(result: dict) -> None:
    """Replace every FID value (and what is computed from them) by null: the stand-in's are meaningless."""
    for name, metrics in result.get("eval", {}).items():
        if name.startswith("fid-"):
            metrics["fid"] = None
    result.pop("fid_summary", None)


def _stop(signum: int, frame: object) -> None:
    raise SystemExit(f"stopped by signal {signum}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, default=Path("benchmarks/pipeline_gpu_fashion.toml"))
    parser.add_argument("--inception-weights", default=None)
    parser.add_argument("--out", type=Path, default=RESULTS / "pipeline_gpu_fashion.json")
    args = parser.parse_args()
    plan = pipeline.load_plan(args.config, None)
    run = Path(plan.pretrain.run)
    fresh_run(run)
    weights, stand_in = fid_network(args.inception_weights, run.parent / "stand-in")
    os.environ[ENV_VAR] = weights  # read when eval fid runs (the plan's inception_weights stays unset)
    signal.signal(signal.SIGTERM, _stop)  # `timeout` on a borrowed machine: keep the stages that finished
    started_at = dt.datetime.now(dt.timezone.utc)
    start, completed = time.perf_counter(), False
    try:
        pipeline.run(plan)
        completed = True
    except SystemExit:
        pass
    wall_s = round(time.perf_counter() - start, 1)
    result = {"benchmark": args.out.stem, "machine": machine(), "config": str(args.config), "completed": completed,
              "pipeline_wall_s" if completed else "stopped_after_s": wall_s,
              "fid_network": STAND_IN_NOTE if stand_in else weights,
              "stage_finished_after_s": finish_times(run, started_at)} | collect(run)
    if stand_in:
        hide_fid_values(result)
        result["fid_values"] = "withheld: computed with the random-weight stand-in, so only the times are meaningful"
    text = json.dumps(result, indent=2)
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
