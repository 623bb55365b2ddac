"""Pieces shared by benchmarks/prior_sweep.py and benchmarks/gpu_suite.py: a backbone and latent cache to time
priors on, and the batched-sweep-against-sequential measurement. Timings of the prior stages do not depend on
how well the backbone is trained, only on its architecture, so a short pretrain on any 28x28 data set (the
bundled builtin:mnist-10k by default) gives the default Fashion-MNIST network sizes."""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from hebmctl.schemas import CacheLatentsConfig, PretrainConfig, TrainPriorConfig
from hebmctl.stages import cache_latents, pretrain, train_prior, train_prior_sweep

TINY_BACKBONE = dict(latent_dims=(8, 4, 2), channels=8, mlp_hidden=32, batch_size=32, limit=512, eval_limit=64, kl_warmup_steps=4)
"""--smoke: a backbone that trains in seconds on a CPU."""
TINY_PRIOR = dict(width=16, depth=1, langevin_steps=3, batch_size=32)


def prepare(root: Path, data: str, steps: int, cache_limit: int, device: str, tiny: bool) -> tuple[Path, Path]:
    """(backbone folder, latent cache folder) under root: `steps` pretrain steps on `data`, then the cache of
    `cache_limit` images per split (both skipped when already there)."""
    extra = TINY_BACKBONE if tiny else {}
    pretrain.run(PretrainConfig(out=root / "backbone", data=data, steps=steps, checkpoint_every=max(steps, 1), log_every=max(steps // 4, 1),
                                device=device, **({"kl_warmup_steps": min(steps, 1000)} | extra)))
    cache_latents.run(CacheLatentsConfig(backbone=root / "backbone", out=root / "latents", limit=cache_limit, device=device))
    return root / "backbone", root / "latents"


def prior_config(backbone: Path, latents: Path, out: Path, tiny: bool, **settings) -> TrainPriorConfig:
    """A train-prior config with the defaults (diffusion, T = 3, K = 30, batch 256) unless tiny or overridden; checkpoints
    only at the end (their writes are not what is timed)."""
    base = dict(backbone=backbone, latents=latents, out=out, checkpoint_every=10**6, log_every=10**6)
    return TrainPriorConfig(**(base | (TINY_PRIOR if tiny else {}) | settings))


def time_train_prior(config: TrainPriorConfig, threads: int | None = None) -> dict:
    """Train one prior (force) and read its updates/s (the training loop's wall time, setup excluded) from the manifest."""
    old = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        manifest = train_prior.run(config, train_prior.RunControl(force=True))
    finally:
        torch.set_num_threads(old)
    return {"device": manifest.metrics["device"], "updates": config.steps, "train_wall_s": manifest.metrics["train_wall_s"],
            "updates_per_s": manifest.metrics["steps_per_s"], "compile": config.compile, "tf32": config.tf32,
            "scheme": config.scheme, "steady_updates_per_s": steady_rate(config.out / "metrics.jsonl")}


def steady_rate(metrics: Path) -> float | None:
    """Updates/s between the first and the last metrics line: without the first window, which holds the one-off costs
    (the CUDA graphs' capture, torch.compile); None with fewer than two lines (log_every >= steps)."""
    lines = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()] if metrics.is_file() else []
    lines = [line for line in lines if "wall_s" in line]
    if len(lines) < 2 or lines[-1]["wall_s"] <= lines[0]["wall_s"]:
        return None
    return round((lines[-1]["step"] - lines[0]["step"]) / (lines[-1]["wall_s"] - lines[0]["wall_s"]), 3)


def time_sweep(root: Path, backbone: Path, latents: Path, n: int, steps: int, device: str, tiny: bool, compile: str = "auto") -> dict:
    """n priors (seeds 0..n-1) trained by one batched sweep against n sequential train-prior runs, same device, same
    updates each, both with --compile `compile`; both sides' training-loop wall time (setup excluded) and the ratio."""
    configs = [prior_config(backbone, latents, root / f"sweep-{i}", tiny, seed=i, steps=steps, device=device, compile=compile)
               for i in range(n)]
    t0 = time.perf_counter()
    manifests = train_prior_sweep.run(configs, force=True)
    sweep_total = time.perf_counter() - t0
    sweep_s = manifests[0].metrics["train_wall_s"]
    sequential_s, t0 = 0.0, time.perf_counter()
    for i in range(n):
        alone = prior_config(backbone, latents, root / f"alone-{i}", tiny, seed=i, steps=steps, device=device, compile=compile)
        sequential_s += train_prior.run(alone, train_prior.RunControl(force=True)).metrics["train_wall_s"]
    sequential_total = time.perf_counter() - t0
    return {"device": manifests[0].metrics["device"], "priors": n, "updates_each": steps, "compile": compile,
            "batched_train_s": sweep_s, "sequential_train_s": round(sequential_s, 2),
            "speedup": round(sequential_s / max(sweep_s, 1e-9), 2),
            "batched_total_s": round(sweep_total, 2), "sequential_total_s": round(sequential_total, 2),
            "total_speedup": round(sequential_total / max(sweep_total, 1e-9), 2)}
