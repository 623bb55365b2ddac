"""Reproduce a data set's results end to end and collect them as one JSON (issue 5).

    python benchmarks/reproduce.py --config examples/fashion-mnist.toml [--run DIR] [--name NAME]
    python benchmarks/reproduce.py --collect RUN --name NAME        # only gather an existing run's results

With --config, runs `hebmctl pipeline` on it (every stage, then the eval tables; stages already
complete are skipped, so an interrupted run resumes). Then reads every manifest under the run
folder: backbone test metrics and training speed, each prior's training numbers, and every
evaluation's result (FID per source with the prior-hole closure, OOD, anomaly, probes, recon).
Writes benchmarks/results/reproduce_<name>.json. Uses CUDA when present (the stages' device
default is "auto"), so the same command finishes in minutes on a GPU.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from _common import emit

from hebmctl.stages import pipeline


def _manifest(folder: Path) -> dict | None:
    path = folder / "manifest.json"
    return json.loads(path.read_text()) if path.is_file() else None


def collect(run: Path) -> dict:
    """Numbers of every complete artifact under a run folder."""
    out: dict = {"run": str(run)}
    backbone = _manifest(run / "backbone")
    if backbone:
        out["backbone"] = {"config": {k: backbone["config"][k] for k in ("data", "latent_dims", "steps", "batch_size", "inference",
                                                                         "exclude_classes")},
                           "metrics": backbone["metrics"]}
    out["priors"] = {}
    for folder in sorted((run / "priors").glob("*")):
        m = _manifest(folder)
        if m:
            keys = ("scheme", "T", "langevin_steps", "step_size", "b2", "energy_l2", "spectral_norm", "steps", "width", "batch_size", "lr",
                    "weight_decay", "lr_decay")
            out["priors"][folder.name] = {"config": {k: m["config"].get(k) for k in keys}, "metrics": m["metrics"]}
    out["eval"] = {}
    for folder in sorted((run / "eval").glob("*")):
        m = _manifest(folder)
        if m:
            out["eval"][folder.name] = m["metrics"]
    gaussian = out["eval"].get("fid-gaussian")
    if gaussian and "fid-recon" in out["eval"]:  # the FIDs at the Gaussian prior's N (a run may hold smaller-N studies too)
        n = gaussian["n"]
        fids = {name[len("fid-"):]: r["fid"] for name, r in out["eval"].items() if name.startswith("fid-") and r["n"] == n}
        if "recon" in fids:
            out["fid_summary"] = pipeline.fid_summary(fids, n)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, help="Pipeline TOML with eval tables (examples/*.toml).")
    parser.add_argument("--run", type=Path, help="Run folder (overrides the config's `run`).")
    parser.add_argument("--collect", type=Path, help="Only collect the results of this existing run folder.")
    parser.add_argument("--name", required=True, help="Result name: benchmarks/results/reproduce_<name>.json.")
    args = parser.parse_args()
    if args.collect is None and args.config is None:
        parser.error("give --config (run and collect) or --collect RUN")
    wall_s = None
    if args.config is not None:
        plan = pipeline.load_plan(args.config, args.run)
        start = time.perf_counter()
        pipeline.run(plan)
        wall_s = round(time.perf_counter() - start, 1)
        run = Path(plan.pretrain.run)
    else:
        run = args.collect
    emit(f"reproduce_{args.name}", {"config": str(args.config) if args.config else None, "pipeline_wall_s": wall_s} | collect(run))


if __name__ == "__main__":
    main()
