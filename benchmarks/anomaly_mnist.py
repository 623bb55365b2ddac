"""MNIST held-out-digit anomaly detection (DESIGN §6, the anchors' protocol): AUPRC mean +- std over seeds.

    python benchmarks/anomaly_mnist.py --data mnist:../shared/data/mnist --root runs/anomaly \
        [--protocol pooled|test-split] [--digits 1,4,5,7,9] [--seeds 0,1,2] [--schemes diffusion]
        [--pretrain-steps 6000] [--kl-warmup-steps 1000] [--prior-steps 4000]
        [--prior-device auto|cpu|cuda] [--batched-priors] [--name anomaly_mnist] [--collect]

For every (digit, seed): a backbone that never saw the digit, its latent cache (only when EBM schemes
are trained), one EBM prior per scheme, then `eval anomaly` (score -L^{>0}, the digit positive) for
the Gaussian prior and each EBM prior, with both score terms ('full' -L^{>0} and 'prior', -Lprior^{>0},
its prior terms only; results keyed 'prior/terms'). `--protocol pooled` (default; the anchors' protocol of
Zenati et al. 2018) trains on `pooled:heldout=D,seed=SEED:DATA` (a seeded 80 % of the 70,000 pooled
images of the other nine digits; test = the other 20 % plus every image of D, about 36 % positives;
run folders `pooled-heldoutD-seedS`); `--protocol test-split` is the older one (`--exclude-classes D`
on MNIST's train split, scored on its test split, about 10 % positives; folders `heldoutD-seedS`).
Every stage is resumable and skipped when complete, so re-running the command continues. Writes
benchmarks/results/<name>.json with per-run AUPRC and AUROC, the positive fraction, mean and std per
digit and prior, and the paper anchors.

--batched-priors trains each scheme's priors of every (digit, seed) together in one process
(`hebmctl.stages.train_prior_sweep`: stacked weights, one vmap per Langevin step; diffusion scheme only), after
all backbones and caches exist; each prior equals the one `train-prior` would train within float rounding and has
its fingerprint, so the per-run loop then finds it up to date.

--collect runs nothing: it reads the `eval anomaly` manifests already under --root (e.g. runs made
by several processes at once, one per digit and seed, then copied here) and summarises those; a
(digit, seed) whose evaluations are missing is listed under "missing" and left out of the means.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from _common import emit

from hebmctl.data.protocols import pooled_spec
from hebmctl.io.manifest import has_manifest, read_manifest
from hebmctl.schemas import CacheLatentsConfig, EvalAnomalyConfig, EvalAnomalyManifest, PretrainConfig, TrainPriorConfig
from hebmctl.schemas.eval import prior_label
from hebmctl.stages import cache_latents, eval_anomaly, pretrain, train_prior, train_prior_sweep

TERMS = ("full", "prior")  # both anomaly scores: -L^{>0} and -Lprior^{>0}, its prior terms only (see eval anomaly --terms;
# results before issue 12 key the prior terms as 'latent'; a diffusion prior gives Diff-EBM's DiffEBM>0 under both)
ANCHORS = {  # AUPRC for held-out 1, 4, 5, 7, 9 (DESIGN §6)
    "Hier-EBM": {1: 0.722, 4: 0.949, 5: 0.980, 7: 0.941, 9: 0.935},
    "Joint-EBM": {1: 0.470, 4: 0.941, 5: 0.964, 7: 0.815, 9: 0.796},
    "LEBM": {1: 0.336, 4: 0.630, 5: 0.619, 7: 0.463, 9: 0.413},
}


METRICS = ("auprc", "auroc", "positive_fraction")


def run_folder(args, digit: int, seed: int) -> Path:
    return args.root / (f"pooled-heldout{digit}-seed{seed}" if args.protocol == "pooled" else f"heldout{digit}-seed{seed}")


def pretrain_config(args, digit: int, seed: int) -> PretrainConfig:
    """The backbone of one (digit, seed): trained on the pooled protocol's train part, or on MNIST's train split without the digit."""
    common = dict(run=run_folder(args, digit, seed), seed=seed, steps=args.pretrain_steps, kl_warmup_steps=args.kl_warmup_steps)
    if args.protocol == "pooled":
        return PretrainConfig(data=pooled_spec(digit, seed, args.data), **common)
    return PretrainConfig(data=args.data, exclude_classes=(digit,), **common)


def prior_config(args, digit: int, seed: int, scheme: str) -> TrainPriorConfig:
    return TrainPriorConfig(run=run_folder(args, digit, seed), scheme=scheme, seed=seed, steps=args.prior_steps, device=args.prior_device)


def batched_priors(args, digits: list[int], seeds: list[int]) -> None:
    """--batched-priors: every run's backbone and latent cache, then each scheme's priors of all runs in one batched sweep."""
    runs = [(d, s) for d in digits for s in seeds]
    for digit, seed in runs:
        pretrain.run(pretrain_config(args, digit, seed))
        cache_latents.run(CacheLatentsConfig(run=run_folder(args, digit, seed), seed=seed))
    for scheme in args.schemes:
        train_prior_sweep.run([prior_config(args, digit, seed, scheme) for digit, seed in runs])


def one_run(args, digit: int, seed: int) -> dict[str, dict[str, float]]:
    """AUPRC, AUROC and positive fraction per 'prior/terms' ('gaussian', schemes...) of one (digit, seed) run."""
    run = run_folder(args, digit, seed)
    pretrain.run(pretrain_config(args, digit, seed))
    if args.schemes:
        cache_latents.run(CacheLatentsConfig(run=run, seed=seed))
    for scheme in args.schemes:
        train_prior.run(prior_config(args, digit, seed, scheme))
    results = {}
    for prior in ["gaussian", *args.schemes]:
        for terms in TERMS:
            metrics = eval_anomaly.run(EvalAnomalyConfig(run=run, prior=prior, seed=seed, terms=terms)).metrics
            results[f"{prior}/{terms}"] = {key: float(metrics[key]) for key in METRICS}
    return results


def collect_run(args, digit: int, seed: int) -> dict[str, dict[str, float]] | None:
    """The metrics per 'prior/terms' read from the run's existing `eval anomaly` manifests (found by
    content, whatever their folder names); None if any wanted one is missing."""
    run = run_folder(args, digit, seed)
    found = {}
    for folder in sorted((run / "eval").glob("anomaly-*")):
        if not has_manifest(folder):
            continue
        manifest, _ = read_manifest(folder, EvalAnomalyManifest)
        if manifest.metrics.get("heldout", digit) != digit:
            raise SystemExit(f"{folder} evaluated held-out digit {manifest.metrics['heldout']}, expected {digit}.")
        found[f"{prior_label(manifest.config.prior)}/{manifest.config.terms}"] = {key: float(manifest.metrics[key]) for key in METRICS}
    wanted = [f"{prior}/{terms}" for prior in ["gaussian", *args.schemes] for terms in TERMS]
    return {key: found[key] for key in wanted} if all(key in found for key in wanted) else None


def _backbone_device(run: Path) -> str:
    """Where the run's backbone was trained ('cuda' / 'cpu'), from its manifest (runs may come from another machine)."""
    return str(json.loads((run / "backbone" / "manifest.json").read_text())["metrics"].get("device"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="MNIST data spec, e.g. mnist:../shared/data/mnist")
    parser.add_argument("--root", type=Path, default=Path("runs/anomaly"), help="Folder of the per-(digit, seed) run folders.")
    parser.add_argument("--protocol", choices=("pooled", "test-split"), default="pooled",
                        help="pooled: the anchors' 80/20 split of all 70,000 images (default); test-split: MNIST's own splits.")
    parser.add_argument("--digits", default="1,4,5,7,9")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--schemes", default="diffusion", help="EBM schemes to train per run, comma-separated (or empty).")
    parser.add_argument("--pretrain-steps", type=int, default=6000)
    parser.add_argument("--kl-warmup-steps", type=int, default=1000)
    parser.add_argument("--prior-steps", type=int, default=4000)
    parser.add_argument("--prior-device", default="auto", help="Device of prior training. The Langevin loop is launch-bound, so "
                        "with many runs in parallel one CPU thread each can beat sharing one GPU.")
    parser.add_argument("--batched-priors", action="store_true", help="Train each scheme's priors of all runs together in one "
                        "batched sweep (diffusion scheme) before the per-run loop.")
    parser.add_argument("--name", default="anomaly_mnist", help="Result file: benchmarks/results/<name>.json.")
    parser.add_argument("--collect", action="store_true", help="Run no stage; summarise the evaluations already under --root.")
    args = parser.parse_args()
    args.schemes = [s for s in args.schemes.split(",") if s]
    digits, seeds = [int(d) for d in args.digits.split(",")], [int(s) for s in args.seeds.split(",")]
    if args.batched_priors and not args.collect:
        batched_priors(args, digits, seeds)
    step = collect_run if args.collect else one_run
    all_runs = {f"{d}/{s}": step(args, d, s) for d in digits for s in seeds}
    runs = {key: value for key, value in all_runs.items() if value is not None}
    summary: dict[str, dict[str, dict]] = {metric: {} for metric in ("auprc", "auroc")}
    for prior in [f"{p}/{t}" for p in ["gaussian", *args.schemes] for t in TERMS]:
        for metric, table in summary.items():
            values = {d: [runs[f"{d}/{s}"][prior][metric] for s in seeds if f"{d}/{s}" in runs] for d in digits}
            table[prior] = {d: {"mean": float(np.mean(v)), "std": float(np.std(v)), "n_seeds": len(v)} for d, v in values.items() if v}
    positive_fraction = {key: value["gaussian/full"]["positive_fraction"] for key, value in runs.items()}
    devices = sorted({_backbone_device(run_folder(args, *map(int, key.split("/")))) for key in runs})
    settings = {"data": args.data, "protocol": args.protocol, "pretrain_steps": args.pretrain_steps,
                "kl_warmup_steps": args.kl_warmup_steps, "prior_steps": args.prior_steps, "prior_device": args.prior_device,
                "digits": digits, "seeds": seeds, "schemes": args.schemes, "batched_priors": args.batched_priors}
    emit(args.name, {"backbone_devices": devices, "settings": settings, "auprc": summary["auprc"], "auroc": summary["auroc"],
                     "positive_fraction": positive_fraction, "runs": runs, "missing": sorted(set(all_runs) - set(runs)),
                     "anchors": ANCHORS})


if __name__ == "__main__":
    main()
