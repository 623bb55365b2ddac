"""One process against two (torchrun, gloo) on the CPU: train-prior and sample (the sibling of ddp_cpu.py).

    python benchmarks/ddp_cpu_prior.py [--data fashion-mnist:../shared/data/fashion-mnist] [--prior-steps 30] [--n 512]
                                       [--schemes diffusion,joint] [--out /tmp/ddp-prior-bench] [--keep-backbone]

One backbone (hvae defaults, `--backbone-steps` updates, one process) and its latent cache (`--cache-limit` train
images) are made first; then, for each scheme, train-prior with its defaults (diffusion: T = 3, K = 30, batch 256;
joint: K = 60) runs `--prior-steps` updates once as one process and once as `torchrun --nproc-per-node 2`, one
intra-op thread per process, and `sample` draws `--n` images of each run's prior in batches of `--sample-batch`
the same two ways. Throughput is read from the manifests (train-prior: steps/s of the training loop on rank 0, the
all_reduce waits included; sample: images/s of the generation on rank 0, the gather included). Also checks the
agreement: the largest weight difference between the two priors (float32 summation order), and that the two
sample folders of the one-process prior hold identical files.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from _common import REPO, emit


def launch(args: list[str], processes: int) -> float:
    """Run `hebmctl ARGS` as one process or under torchrun, one intra-op thread each; returns wall seconds."""
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    prefix = [sys.executable, "-m", "hebmctl"] if processes == 1 else [
        sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(processes), "-m", "hebmctl", "--"]
    start = time.perf_counter()
    subprocess.run(prefix + args, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return round(time.perf_counter() - start, 2)


def files_sha(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and p.name != "manifest.json"}


def max_weight_diff(a: Path, b: Path) -> float:
    sys.path.insert(0, str(REPO))
    from hebmctl.io.state import load_tensors

    worst = 0.0
    for path in sorted(a.glob("*.safetensors")):
        x, _ = load_tensors(path)
        y, _ = load_tensors(b / path.name)
        worst = max([worst, *(float((x[k] - y[k]).abs().max()) for k in x if x[k].numel())])
    return worst


def scheme_runs(root: Path, scheme: str, args: argparse.Namespace) -> dict:
    backbone, latents = root / "backbone", root / "latents"
    runs: dict = {}
    for processes in (1, 2):
        prior = root / scheme / f"p{processes}"
        shutil.rmtree(prior, ignore_errors=True)
        wall = launch(["train-prior", "--backbone", str(backbone), "--latents", str(latents), "--out", str(prior), "--scheme", scheme,
                       "--steps", str(args.prior_steps), "--checkpoint-every", "100000", "--log-every", "10", "--device", "cpu"], processes)
        metrics = json.loads((prior / "manifest.json").read_text())["metrics"]
        runs[f"{processes}_process"] = {"train_prior_command_wall_s": wall, "train_prior_steps_per_s": metrics["steps_per_s"],
                                        "final_loss": metrics["final_loss"]}
    for processes in (1, 2):  # both sample the one-process prior: the files must be identical
        samples = root / scheme / f"samples-p{processes}"
        shutil.rmtree(samples, ignore_errors=True)
        wall = launch(["sample", "--backbone", str(backbone), "--prior", str(root / scheme / "p1"), "--out", str(samples),
                       "--n", str(args.n), "--batch-size", str(args.sample_batch), "--device", "cpu"], processes)
        metrics = json.loads((samples / "manifest.json").read_text())["metrics"]
        runs[f"{processes}_process"] |= {"sample_command_wall_s": wall, "sample_images_per_s": metrics["images_per_s"]}
    one, two = runs["1_process"], runs["2_process"]
    return runs | {
        "speedup": {"train-prior": round(two["train_prior_steps_per_s"] / one["train_prior_steps_per_s"], 2),
                    "sample": round(two["sample_images_per_s"] / one["sample_images_per_s"], 2)},
        "agree": {"prior_max_abs_weight_diff": max_weight_diff(root / scheme / "p1", root / scheme / "p2"),
                  "final_loss_rel_diff": abs(one["final_loss"] - two["final_loss"]) / max(abs(one["final_loss"]), 1e-12),
                  "sample_files_identical": files_sha(root / scheme / "samples-p1") == files_sha(root / scheme / "samples-p2")},
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", default="builtin:mnist-10k")
    parser.add_argument("--backbone-steps", type=int, default=200)
    parser.add_argument("--cache-limit", type=int, default=2000)
    parser.add_argument("--prior-steps", type=int, default=30)
    parser.add_argument("--n", type=int, default=512)
    parser.add_argument("--sample-batch", type=int, default=64)
    parser.add_argument("--schemes", default="diffusion,joint")
    parser.add_argument("--out", type=Path, default=Path("/tmp/ddp-prior-bench"))
    parser.add_argument("--keep-backbone", action="store_true", help="reuse --out's backbone and cache when complete")
    args = parser.parse_args()
    if not args.keep_backbone:
        shutil.rmtree(args.out, ignore_errors=True)
    launch(["pretrain", "--out", str(args.out / "backbone"), "--data", args.data, "--steps", str(args.backbone_steps),
            "--batch-size", "128", "--eval-limit", "256", "--checkpoint-every", "100000", "--device", "cpu"], 1)
    launch(["cache-latents", "--backbone", str(args.out / "backbone"), "--out", str(args.out / "latents"), "--limit", str(args.cache_limit),
            "--splits", "train", "--device", "cpu"], 1)
    load_before = [round(x, 1) for x in os.getloadavg()]
    schemes = {scheme: scheme_runs(args.out, scheme, args) for scheme in args.schemes.split(",")}
    emit("ddp_cpu_prior", {
        "settings": {key: (str(value) if isinstance(value, Path) else value) for key, value in vars(args).items()},
        "note": "one process vs torchrun --nproc-per-node 2 (1 thread each), gloo, on a 2-core machine shared with other sessions; "
                "train-prior and sample with their defaults otherwise",
        "load_average_1_5_15_min": {"before": load_before, "after": [round(x, 1) for x in os.getloadavg()]},
        "schemes": schemes,
    })


if __name__ == "__main__":
    main()
