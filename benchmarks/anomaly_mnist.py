"""MNIST held-out-digit anomaly detection (DESIGN §6, the anchors' protocol): AUPRC mean +- std over seeds.

    python benchmarks/anomaly_mnist.py --data mnist:../shared/data/mnist --root runs/anomaly \
        [--protocol pooled|test-split] [--digits 1,4,5,7,9] [--seeds 0,1,2] [--schemes diffusion]
        [--alone-families vlae] [--joint-families hvae,vlae] [--mle-steps K'] [--pretrain-steps 6000] [--kl-warmup-steps 1000]
        [--prior-steps 4000] [--prior-device auto|cpu|cuda] [--batched-priors] [--name anomaly_mnist] [--collect]

The rows of the table, for every (digit, seed), each scored by `eval anomaly --terms both` (the full
-L^{>0} of Joint-EBM eq. 20 and the prior's terms -Lprior^{>0}, from the same draws; a diffusion prior
gives Diff-EBM's DiffEBM^{>0} under both keys); results keyed 'row/full' and 'row/prior':
- 'gaussian' and one row per --schemes (two-stage): a backbone trained alone that never saw the digit,
  its latent cache, an EBM prior per scheme on the cache;
- per --alone-families F: 'gaussian-F', a backbone of family F trained alone (its defaults; suffix `-F`);
- per --joint-families F: 'joint-learned-F', a backbone trained together with its EBM prior
  (`pretrain --prior joint --free-bits 0`, Joint-EBM eq. 15-19; run folder suffix `-joint-F`), and
  'gaussian-of-joint-F', the same backbone scored with its Gaussian prior alone (what the EBM adds);
- with --mle-steps K': 'mle-hvae', an hvae trained jointly by MLE with K' steps of posterior Langevin
  (`--posterior langevin`, Joint-EBM sec. 3.2 / LEBM; suffix `-mle-hvae`), scored with the same K' and
  step size (--mle-step-size).
`--protocol pooled` (default; the anchors' protocol of Zenati et al. 2018) trains on
`pooled:heldout=D,seed=SEED:DATA` (a seeded 80 % of the 70,000 pooled images of the other nine digits;
test = the other 20 % plus every image of D, about 36 % positives; run folders `pooled-heldoutD-seedS`);
`--protocol test-split` is the older one (`--exclude-classes D` on MNIST's train split, scored on its
test split, about 10 % positives; folders `heldoutD-seedS`). Every stage is resumable and skipped when
complete, so re-running the command continues. Writes benchmarks/results/<name>.json with per-run AUPRC
and AUROC, the positive fraction, mean, std (population, ddof 0) and per-seed values per digit and row, each EBM
row's AUPRC gain over the Gaussian prior of the same backbone and score, seed by seed ('auprc_gain_over_gaussian'),
and the paper anchors.

--batched-priors trains each scheme's priors of every (digit, seed) together in one process
(`hebmctl.stages.train_prior_sweep`: stacked weights, one vmap per Langevin step; diffusion scheme only), after
all backbones and caches exist; each prior equals the one `train-prior` would train within float rounding and has
its fingerprint, so the per-run loop then finds it up to date.

--collect runs nothing: it reads the `eval anomaly` manifests already under --root (e.g. runs made by
several processes at once, one per digit and seed) and summarises those; a row not evaluated for a
(digit, seed) is listed under "missing" and left out of its means.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from _common import emit

from hebmctl.data.protocols import pooled_spec
from hebmctl.io.manifest import has_manifest, read_manifest
from hebmctl.schemas import CacheLatentsConfig, EvalAnomalyConfig, EvalAnomalyManifest, PretrainConfig, TrainPriorConfig
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


def pretrain_config(args, digit: int, seed: int, row: Row | None = None) -> PretrainConfig:
    """The backbone of one (digit, seed) (of `row`'s run folder, with its settings; default: the base run): trained on the pooled
    protocol's train part, or on MNIST's train split without the digit."""
    run = run_folder(args, digit, seed) if row is None else row_folder(args, row, digit, seed)
    extra = {} if row is None else dict(row.pretrain)
    common = dict(run=run, seed=seed, steps=args.pretrain_steps, kl_warmup_steps=args.kl_warmup_steps, **extra)
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


@dataclass(frozen=True)
class Row:
    """One row of the table: the prior scored (`eval anomaly --prior`) in one run folder of the (digit, seed).

    suffix '' is the base run (a backbone trained alone, then the two-stage priors); other suffixes are
    extra backbones trained jointly with an EBM prior (`pretrain --prior joint`), each in its own folder."""

    name: str
    suffix: str
    prior: str
    pretrain: tuple[tuple[str, Any], ...] = ()  # PretrainConfig fields of the run's backbone beyond the base ones
    posterior_langevin_steps: int | None = None  # eval anomaly --posterior-langevin-steps
    posterior_step_size: float | None = None  # eval anomaly --posterior-step-size


def rows_of(args) -> list[Row]:
    """The rows asked for: Gaussian and each two-stage scheme on the base backbone, other families' backbones trained alone
    (Gaussian prior, their own defaults), then per jointly learned
    family its EBM prior and, on the same backbone, its Gaussian part alone, then MLE with posterior Langevin."""
    rows = [Row("gaussian", "", "gaussian"), *(Row(scheme, "", scheme) for scheme in args.schemes)]
    rows += [Row(f"gaussian-{family}", f"-{family}", "gaussian", (("backbone", family),)) for family in args.alone_families]
    for family in args.joint_families:
        joint = (("backbone", family), ("prior", "joint"), ("free_bits", 0.0))
        rows += [Row(f"joint-learned-{family}", f"-joint-{family}", "joint-learned", joint),
                 Row(f"gaussian-of-joint-{family}", f"-joint-{family}", "gaussian", joint)]
    if args.mle_steps:
        mle = (("prior", "joint"), ("free_bits", 0.0), ("posterior", "langevin"), ("posterior_langevin_steps", args.mle_steps),
               ("posterior_step_size", args.mle_step_size))
        rows.append(Row("mle-hvae", "-mle-hvae", "joint-learned", mle, args.mle_steps, args.mle_step_size))
    return rows


def row_folder(args, row: Row, digit: int, seed: int) -> Path:
    base = run_folder(args, digit, seed)
    return base.with_name(base.name + row.suffix)


def eval_config(args, row: Row, digit: int, seed: int) -> EvalAnomalyConfig:
    """Both scores from the same draws (--terms both): -L^{>0} and -Lprior^{>0}, or DiffEBM^{>0} for a diffusion prior."""
    return EvalAnomalyConfig(run=row_folder(args, row, digit, seed), prior=row.prior, seed=seed, terms="both",
                             posterior_langevin_steps=row.posterior_langevin_steps, posterior_step_size=row.posterior_step_size)


def by_terms(metrics: dict) -> dict[str, dict[str, float]]:
    """'full' and 'prior' metrics of one `eval anomaly --terms both` result (a diffusion prior's DiffEBM>0 under both)."""
    scores = metrics["scores"]
    if "DiffEBM>0" in scores:
        named = {"full": scores["DiffEBM>0"], "prior": scores["DiffEBM>0"]}
    else:
        named = {"full": scores["-L>0"], "prior": scores["-Lprior>0"]}
    return {terms: {"auprc": float(m["auprc"]), "auroc": float(m["auroc"]), "positive_fraction": float(metrics["positive_fraction"])}
            for terms, m in named.items()}


def one_run(args, digit: int, seed: int) -> dict[str, dict[str, float]]:
    """AUPRC, AUROC and positive fraction per 'row/terms' of one (digit, seed): every backbone, cache and prior, then the evals."""
    rows = rows_of(args)
    pretrain.run(pretrain_config(args, digit, seed))
    if args.schemes:
        cache_latents.run(CacheLatentsConfig(run=run_folder(args, digit, seed), seed=seed))
    for scheme in args.schemes:
        train_prior.run(prior_config(args, digit, seed, scheme))
    for row in rows:
        if row.suffix:
            pretrain.run(pretrain_config(args, digit, seed, row))
    results = {}
    for row in rows:
        for terms, metrics in by_terms(eval_anomaly.run(eval_config(args, row, digit, seed)).metrics).items():
            results[f"{row.name}/{terms}"] = metrics
    return results


def collect_run(args, digit: int, seed: int) -> dict[str, dict[str, float]]:
    """The metrics per 'row/terms' read from the rows' existing `eval anomaly` manifests; a row not evaluated yet is left out."""
    found = {}
    for row in rows_of(args):
        folder = eval_config(args, row, digit, seed).out
        if not has_manifest(folder):
            continue
        manifest, _ = read_manifest(folder, EvalAnomalyManifest)
        if manifest.metrics.get("heldout", digit) != digit:
            raise SystemExit(f"{folder} evaluated held-out digit {manifest.metrics['heldout']}, expected {digit}.")
        found |= {f"{row.name}/{terms}": metrics for terms, metrics in by_terms(manifest.metrics).items()}
    return found


def spread(values: list[float]) -> dict:
    """Mean, population std (ddof 0), count and the values themselves, over seeds."""
    return {"mean": float(np.mean(values)), "std": float(np.std(values)), "n_seeds": len(values), "values": values}


def baseline_pairs(args) -> dict[str, str]:
    """Row -> the Gaussian-prior row on the same backbone, scored from the same draws: what the EBM adds, seed by seed.
    The two-stage joint scheme pairs with 'gaussian' (the diffusion and cooperative priors score DiffEBM>0, which has no
    Gaussian counterpart, and are left out), a jointly learned EBM with its own backbone's Gaussian prior alone."""
    pairs = {scheme: "gaussian" for scheme in args.schemes if scheme == "joint"}
    return pairs | {f"joint-learned-{family}": f"gaussian-of-joint-{family}" for family in args.joint_families}


def paired_gains(args, runs: dict, digits: list[int], seeds: list[int]) -> dict[str, dict]:
    """AUPRC of each EBM row minus its Gaussian baseline's, same backbone, same score, per (digit, seed): the per-seed
    differences, their mean and (population) std, and on how many seeds the EBM row is strictly above."""
    gains = {}
    for row, baseline in baseline_pairs(args).items():
        for terms in TERMS:
            per_digit = {}
            for digit in digits:
                pair = [runs[f"{digit}/{s}"] for s in seeds]
                diffs = [r[f"{row}/{terms}"]["auprc"] - r[f"{baseline}/{terms}"]["auprc"]
                         for r in pair if f"{row}/{terms}" in r and f"{baseline}/{terms}" in r]
                if diffs:
                    per_digit[digit] = spread(diffs) | {"n_above": int(sum(d > 0 for d in diffs))}
            gains[f"{row}-minus-{baseline}/{terms}"] = per_digit
    return gains


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
    parser.add_argument("--alone-families", default="", help="Other backbone families trained alone (Gaussian prior, family "
                        "defaults), one extra run folder each (suffix -F), comma-separated: e.g. vlae.")
    parser.add_argument("--joint-families", default="", help="Backbone families also trained jointly with an EBM prior "
                        "(pretrain --prior joint, free bits 0), one extra run folder each, comma-separated: e.g. hvae,vlae.")
    parser.add_argument("--mle-steps", type=int, default=0, help="K' of an extra hvae run trained by MLE with posterior Langevin "
                        "(pretrain --prior joint --posterior langevin) and scored with the same K'; 0 (default): no such run.")
    parser.add_argument("--mle-step-size", type=float, default=0.05, help="--mle-steps: the posterior Langevin step size s of "
                        "training and scoring (default 0.05: at the CLI's 0.1 the hvae chain blew up once its decoder std fell to 0.3).")
    parser.add_argument("--name", default="anomaly_mnist", help="Result file: benchmarks/results/<name>.json.")
    parser.add_argument("--collect", action="store_true", help="Run no stage; summarise the evaluations already under --root "
                        "(a row not evaluated for a (digit, seed) is listed under 'missing' and left out of its means).")
    args = parser.parse_args()
    args.schemes = [s for s in args.schemes.split(",") if s]
    args.joint_families = [f for f in args.joint_families.split(",") if f]
    args.alone_families = [f for f in args.alone_families.split(",") if f]
    digits, seeds = [int(d) for d in args.digits.split(",")], [int(s) for s in args.seeds.split(",")]
    if args.batched_priors and not args.collect:
        batched_priors(args, digits, seeds)
    step = collect_run if args.collect else one_run
    runs = {f"{d}/{s}": step(args, d, s) for d in digits for s in seeds}
    keys = [f"{row.name}/{terms}" for row in rows_of(args) for terms in TERMS]
    summary: dict[str, dict[str, dict]] = {metric: {} for metric in ("auprc", "auroc")}
    for key in keys:
        for metric, table in summary.items():
            values = {d: [runs[f"{d}/{s}"][key][metric] for s in seeds if key in runs[f"{d}/{s}"]] for d in digits}
            table[key] = {d: spread(v) for d, v in values.items() if v}
    positive_fraction = {run: next(iter(value.values()))["positive_fraction"] for run, value in runs.items() if value}
    devices = sorted({_backbone_device(run_folder(args, *map(int, run.split("/")))) for run, value in runs.items() if value})
    settings = {"data": args.data, "protocol": args.protocol, "pretrain_steps": args.pretrain_steps,
                "kl_warmup_steps": args.kl_warmup_steps, "prior_steps": args.prior_steps, "prior_device": args.prior_device,
                "digits": digits, "seeds": seeds, "schemes": args.schemes, "joint_families": args.joint_families,
                "alone_families": args.alone_families,
                "mle_steps": args.mle_steps, "mle_step_size": args.mle_step_size, "batched_priors": args.batched_priors}
    missing = sorted(f"{run}:{row.name}" for run, value in runs.items() for row in rows_of(args) if f"{row.name}/{TERMS[0]}" not in value)
    emit(args.name, {"backbone_devices": devices, "settings": settings, "auprc": summary["auprc"], "auroc": summary["auroc"],
                     "auprc_gain_over_gaussian": paired_gains(args, runs, digits, seeds),
                     "positive_fraction": positive_fraction, "runs": runs, "missing": missing, "anchors": ANCHORS})

if __name__ == "__main__":
    main()
