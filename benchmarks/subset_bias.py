"""How much does "the first N images" of a class-sorted split move an FID? (issue 14, item 10)

    python benchmarks/subset_bias.py [--data cifar10:../shared/data/cifar10-jpg.zip] [--n 5000]
                                     [--backbone RUN/backbone] [--features-dir DIR] [--name NAME]

CIFAR-10's zip lists its test images sorted by class, so its first 5,000 are airplanes, cars, birds,
cats and deer. Until issue 14, `eval fid --prior recon` reconstructed exactly those and compared them
with statistics of all ten classes. This script puts numbers on that mistake, from one pass of the
Inception network over the whole test split (and, with --backbone, one over the reconstructions of
all of it). Every FID is against the statistics of the whole test split, as `eval fid` computes them:

- real images: the first N against a seeded, class-stratified random N (``hebmctl.data.subsets``, the
  subset `eval fid --prior recon` now takes): the first is the subset bias alone, the second FID's
  small-sample floor at this N;
- with --backbone: the reconstructions (decoder means at posterior means, as `eval fid --prior recon`)
  of the same two subsets, and of the whole split.

Features are kept as float64 .npy files in --features-dir (default runs/subset-bias), keyed by the test
split's fingerprint (and the backbone manifest's sha256 for reconstructions), so a re-run reuses them. Writes
benchmarks/results/<name>.json (default subset_bias_<data kind>, e.g. subset_bias_cifar10).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from _common import REPO, emit

from hebmctl.data import load_split
from hebmctl.data.subsets import subset_positions
from hebmctl.metrics.fid import InceptionFeatures, feature_statistics, frechet_distance, resolve_inception_weights
from hebmctl.stages.artifacts import load_backbone
from hebmctl.stages.eval_fid import reconstruct


def cached_features(path: Path, make_images: Callable[[], np.ndarray], extractor: InceptionFeatures) -> tuple[np.ndarray, float]:
    """Inception features [N, 2048] of the images `make_images` returns, read from `path` when it exists; and the
    seconds they took (0 when read)."""
    if path.is_file():
        return np.load(path, allow_pickle=False), 0.0
    t0 = time.perf_counter()
    features = extractor(make_images())
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial.npy")
    np.save(partial, features, allow_pickle=False)
    partial.replace(path)
    return features, time.perf_counter() - t0


def fid_against(features: np.ndarray, reference: tuple[np.ndarray, np.ndarray]) -> float:
    return round(frechet_distance(*feature_statistics(features), *reference), 3)


def class_counts(labels: np.ndarray) -> dict[str, int]:
    classes, counts = np.unique(labels, return_counts=True)
    return {str(int(c)): int(k) for c, k in zip(classes, counts)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="cifar10:../shared/data/cifar10-jpg.zip")
    parser.add_argument("--n", type=int, default=5000, help="Subset size (the FID's N).")
    parser.add_argument("--backbone", type=Path, help="Backbone folder whose reconstructions to score as well.")
    parser.add_argument("--features-dir", type=Path)
    parser.add_argument("--name")
    args = parser.parse_args()
    features_dir = args.features_dir or REPO / "runs" / "subset-bias"
    device = torch.device("cpu")
    extractor = InceptionFeatures(resolve_inception_weights(), device)

    test = load_split(args.data, "test")
    first = np.arange(args.n)
    stratified = subset_positions(test.labels, args.n)
    data_key = test.fingerprint()[:16]
    real, real_s = cached_features(features_dir / f"real_{data_key}.npy", lambda: test.images, extractor)
    reference = feature_statistics(real)
    result: dict = {
        "data": args.data, "split": "test", "ref_n": int(len(test)), "n": args.n, "device": str(device),
        "classes_first_n": class_counts(test.labels[first]), "classes_stratified_n": class_counts(test.labels[stratified]),
        "real": {"first_n": fid_against(real[first], reference), "stratified_n": fid_against(real[stratified], reference)},
        "feature_s": {"real_test": round(real_s, 1)},
    }
    if args.backbone is not None:
        backbone = load_backbone(args.backbone, device)
        recon, recon_s = cached_features(features_dir / f"recon_{data_key}_{backbone.manifest_sha256[:16]}.npy",
                                         lambda: reconstruct(backbone, test.images, 500, device), extractor)
        result["backbone"] = {"folder": str(args.backbone), "manifest_sha256": backbone.manifest_sha256,
                              "steps": backbone.manifest.config.steps}
        result["recon"] = {"first_n": fid_against(recon[first], reference), "stratified_n": fid_against(recon[stratified], reference),
                           "all_test": fid_against(recon, reference)}
        result["feature_s"]["recon_test"] = round(recon_s, 1)
    emit(args.name or f"subset_bias_{args.data.partition(':')[0]}", result)


if __name__ == "__main__":
    main()
