"""One process against two (torchrun, gloo) on the CPU: pretrain, cache-latents and eval fid.

    python benchmarks/ddp_cpu.py [--steps 40] [--cache-limit 4000] [--fid-n 48] [--threads 1] [--out /tmp/ddp-bench] [--keep]

Each stage runs as the ordinary command, once as one process and once as `torchrun --nproc-per-node 2`,
one intra-op thread per process (`--threads` for the single process; on the shared 2-core machine
2 OpenMP threads can be far slower than 1, see tests/conftest.py). cache-latents and eval fid of
both runs read the one-process backbone, so their outputs must be identical. Throughput is read from
the manifests and results the stages write (pretrain: training steps/s without the final
evaluation; cache-latents: images/s of the train split, join included; eval fid: seconds of feature
extraction, gather included). Also checks that the two runs agree: pretrain's final logged loss,
cache-latents' file hashes, the FID.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from _common import REPO, emit

PRETRAIN = ["--data", "builtin:mnist-10k", "--batch-size", "128", "--eval-limit", "256", "--checkpoint-every", "100000",
            "--log-every", "10", "--device", "cpu"]


def launch(args: list[str], processes: int, threads: int) -> float:
    """Run `hebmctl ARGS` as one process or under torchrun, `threads` intra-op threads each; returns wall seconds."""
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS=str(threads))
    prefix = [sys.executable, "-m", "hebmctl"] if processes == 1 else [
        sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(processes), "-m", "hebmctl", "--"]
    start = time.perf_counter()
    subprocess.run(prefix + args, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return round(time.perf_counter() - start, 2)


def stage_runs(root: Path, processes: int, threads: int, steps: int, cache_limit: int, fid_n: int, keep: bool) -> dict:
    folder = root / f"p{processes}"
    if not keep:
        shutil.rmtree(folder, ignore_errors=True)  # every stage computes (nothing is up to date)
    backbone, latents, fid = folder / "backbone", folder / "latents", folder / "fid"
    walls = {"pretrain": launch(["pretrain", "--out", str(backbone), "--steps", str(steps), *PRETRAIN], processes, threads)}
    trained, backbone = backbone, root / "p1" / "backbone"  # both runs cache and score the same (one-process) backbone
    walls["cache-latents"] = launch(["cache-latents", "--backbone", str(backbone), "--out", str(latents), "--limit", str(cache_limit),
                                     "--splits", "train", "--batch-size", "256", "--device", "cpu"], processes, threads)
    walls["eval fid"] = launch(["eval", "fid", "--backbone", str(backbone), "--prior", "recon", "--n", str(fid_n),
                                "--ref-limit", str(fid_n), "--stats-dir", str(folder / "stats"), "--out", str(fid), "--device", "cpu"],
                               processes, threads)
    pretrain = json.loads((trained / "manifest.json").read_text())["metrics"]
    cache = json.loads((latents / "manifest.json").read_text())
    result = json.loads((fid / "result.json").read_text())
    last = [json.loads(line) for line in (trained / "metrics.jsonl").read_text().splitlines()][-1]
    return {
        "command_wall_s": walls,
        "pretrain_steps_per_s": pretrain["steps_per_s"],
        "pretrain_final_loss": last["loss"],
        "cache_images_per_s": cache["metrics"]["splits"]["train"]["images_per_s"],
        "cache_sha256": [o["sha256"] for o in cache["outputs"]],
        "fid_feature_s": result["feature_s"],
        "fid": result["fid"],
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads of the one-process run (torchrun: 1 per process)")
    parser.add_argument("--cache-limit", type=int, default=4000)
    parser.add_argument("--fid-n", type=int, default=48)
    parser.add_argument("--out", type=Path, default=Path("/tmp/ddp-bench"))
    parser.add_argument("--keep", action="store_true", help="keep the stages already complete in --out (they are then up to date and "
                        "skipped; their throughput still comes from their manifests, but command_wall_s is the skip's)")
    args = parser.parse_args()
    runs = {f"{n}_process": stage_runs(args.out, n, args.threads if n == 1 else 1, args.steps, args.cache_limit, args.fid_n, args.keep)
            for n in (1, 2)}
    one, two = runs["1_process"], runs["2_process"]
    emit("ddp_cpu", {
        "settings": {"steps": args.steps, "cache_limit": args.cache_limit, "fid_n": args.fid_n, "pretrain": PRETRAIN, "keep": args.keep,
                     "one_process_threads": args.threads},
        "note": "one process vs torchrun --nproc-per-node 2 (1 thread each), gloo, on a 2-core machine shared with other sessions",
        "runs": runs,
        "speedup": {
            "pretrain": round(two["pretrain_steps_per_s"] / one["pretrain_steps_per_s"], 2),
            "cache-latents": round(two["cache_images_per_s"] / one["cache_images_per_s"], 2),
            "eval fid features": round(one["fid_feature_s"] / two["fid_feature_s"], 2),
        },
        "agree": {
            "pretrain_final_loss_rel_diff": abs(one["pretrain_final_loss"] - two["pretrain_final_loss"]) / abs(one["pretrain_final_loss"]),
            "cache_files_identical": one["cache_sha256"] == two["cache_sha256"],
            "fid_identical": one["fid"] == two["fid"],
        },
    })


if __name__ == "__main__":
    main()
