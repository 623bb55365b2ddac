"""cache-latents throughput vs the encoder's own forward throughput, at the same batch size.

    python benchmarks/cache_latents_throughput.py [--backbone DIR] [--batch-size 512] [--work /tmp/hebm-bench-cache]

Issue 2 target: stage images/s >= 0.8x the bare inference pass (posterior sample + T^{-1}) on the
same images, i.e. HDF5 writing must not be the bottleneck. Without --backbone, a default-size
backbone is trained for 1 step on Fashion-MNIST (throughput does not depend on the weights). The
stage runs as a separate `hebmctl cache-latents` process so that its peak memory is its own.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import torch
from _common import REPO, SHARED_DATA, emit

from hebmctl.data import load_split, to_unit_range
from hebmctl.schemas import PretrainConfig
from hebmctl.stages import pretrain
from hebmctl.stages.artifacts import load_backbone
from hebmctl.stages.cache_latents import infer_u0

FASHION = f"fashion-mnist:{SHARED_DATA / 'fashion-mnist'}"


def bare_inference_images_per_s(backbone_dir: Path, batch_size: int, samples: int) -> float:
    """Images/s of to_unit_range + posterior sampling + T^{-1} over the train split, nothing written."""
    model = load_backbone(backbone_dir, torch.device("cpu")).model
    images = load_split(FASHION, "train").images
    generator = torch.Generator().manual_seed(0)
    t0 = time.perf_counter()
    for start in range(0, len(images), batch_size):
        infer_u0(model, to_unit_range(images[start : start + batch_size]), samples, generator)
    return len(images) / (time.perf_counter() - t0)


def stage_run(backbone_dir: Path, out: Path, batch_size: int, samples: int, extra: list[str]) -> dict:
    cmd = [sys.executable, "-m", "hebmctl.cli", "cache-latents", "--backbone", str(backbone_dir), "--out", str(out),
           "--splits", "train", "--batch-size", str(batch_size), "--samples-per-image", str(samples), "--force", *extra]
    subprocess.run(cmd, check=True, capture_output=True, cwd=REPO)
    manifest = json.loads((out / "manifest.json").read_text())
    train = manifest["metrics"]["splits"]["train"]
    return {"images_per_s": train["images_per_s"], "wall_s": train["wall_s"], "peak_rss_mb": manifest["metrics"]["peak_rss_mb"],
            "file_bytes": manifest["outputs"][0]["bytes"]}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--backbone", type=Path)
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--samples", type=int, default=1)
    parser.add_argument("--work", type=Path, default=Path("/tmp/hebm-bench-cache"))
    args = parser.parse_args()
    backbone = args.backbone
    if backbone is None:
        backbone = args.work / "backbone"
        pretrain.run(PretrainConfig(out=backbone, data=FASHION, steps=1, eval_limit=500))
    variants = {"float32": [], "float16+gzip": ["--storage-dtype", "float16", "--compression", "gzip"]}
    results = {}
    for name, extra in variants.items():
        bare = bare_inference_images_per_s(backbone, args.batch_size, args.samples)
        stage = stage_run(backbone, args.work / f"latents-{name}", args.batch_size, args.samples, extra)
        results[name] = {"bare_images_per_s": round(bare, 1), "stage": stage, "ratio": round(stage["images_per_s"] / bare, 3)}
    emit("cache_latents_throughput", {"data": "fashion-mnist train (60,000)", "batch_size": args.batch_size,
                                      "samples_per_image": args.samples, "backbone": str(backbone), "target_ratio": 0.8,
                                      "results": results})


if __name__ == "__main__":
    main()
