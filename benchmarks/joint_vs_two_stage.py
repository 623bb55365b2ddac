"""Jointly learned backbone + EBM prior against the two-stage path, same family and budget (issue 12: OOD and generation).

    python benchmarks/joint_vs_two_stage.py --data fashion-mnist:../shared/data/fashion-mnist --ood mnist:../shared/data/mnist \
        --root runs/joint-vs-two-stage [--family hvae] [--steps 1000] [--kl-warmup-steps 200] [--prior-steps 1000]
        [--seed 0] [--fid-n 1000] [--ref-limit 2000] [--k 0,1,2] [--ood-limit N] [--name joint_vs_two_stage]

Two run folders under --root:
- `two-stage-F-sS`: `pretrain` (the Gaussian backbone, family defaults), `cache-latents`, `train-prior --scheme joint`
  (an EBM prior of LEBM's form, F(z) tilting the Gaussian, trained on the frozen backbone's latents: a two-stage variant,
  not LEBM's joint MLE; --prior-steps updates);
- `joint-F-sS`: `pretrain --prior joint --free-bits 0` (Joint-EBM eq. 15-19: generator, inference network and EBM prior
  trained together, same steps and warm-up), whose artifact is the backbone plus `priors/joint-learned`.
The two-stage backbone keeps its family's free-bits default (what a user gets); the joint one needs 0 (a KL floor would
switch off eq. 18's positive phase), so the difference between the rows is the whole recipe, not one switch.

Rows scored, each with `eval ood --terms both` (full -L^{>k} and LLR^{>k} of Joint-EBM eq. 20-21, and -Lprior^{>k})
and `eval fid` (N generated images against the in-distribution test split, equal N and reference for every row):
two-stage Gaussian, two-stage joint EBM, jointly learned EBM, and the jointly learned backbone's Gaussian prior
alone (what its EBM adds); reconstructions of both backbones (FID only). Every stage is resumable and skipped when
complete. Writes benchmarks/results/<name>.json: AUROC per score and k, FID per row, wall times, the settings.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from _common import emit

from hebmctl.schemas import CacheLatentsConfig, EvalFidConfig, EvalOodConfig, PretrainConfig, TrainPriorConfig
from hebmctl.stages import cache_latents, eval_fid, eval_ood, pretrain, train_prior

ROWS = (  # (row name, run folder kind, prior scored)
    ("two-stage gaussian", "two-stage", "gaussian"),
    ("two-stage joint EBM", "two-stage", "joint"),
    ("jointly learned EBM", "joint", "joint-learned"),
    ("gaussian of jointly learned backbone", "joint", "gaussian"),
)
ANCHORS = {"OOD AUROC Fashion-MNIST vs MNIST": {"Hier-EBM": 0.893, "HVAE LLR": 0.984, "issue 12 target (full -L>k, joint)": 0.99}}


def folders(args) -> dict[str, Path]:
    return {kind: args.root / f"{kind}-{args.family}-s{args.seed}" for kind in ("two-stage", "joint")}


def train(args) -> dict[str, float]:
    """Both backbones and the two-stage prior; their training wall times (s) from the manifests."""
    runs = folders(args)
    common = dict(data=args.data, backbone=args.family, steps=args.steps, kl_warmup_steps=args.kl_warmup_steps, seed=args.seed)
    wall = {}
    manifest = pretrain.run(PretrainConfig(run=runs["two-stage"], **common))
    wall["two-stage backbone"] = manifest.metrics.get("train_wall_s")
    cache_latents.run(CacheLatentsConfig(run=runs["two-stage"], seed=args.seed))
    manifest = train_prior.run(TrainPriorConfig(run=runs["two-stage"], scheme="joint", steps=args.prior_steps, seed=args.seed))
    wall["two-stage joint prior"] = manifest.metrics.get("train_wall_s")
    manifest = pretrain.run(PretrainConfig(run=runs["joint"], prior="joint", free_bits=0.0, **common))
    wall["joint backbone + prior"] = manifest.metrics.get("train_wall_s")
    return wall


def ood_row(args, run: Path, prior: str) -> dict:
    """AUROC per score name (e.g. '-L>0', 'LLR>1', '-Lprior>2') of one prior."""
    manifest = eval_ood.run(EvalOodConfig(run=run, prior=prior, ood=args.ood, k=args.k, seed=args.seed, terms="both", limit=args.ood_limit))
    return {name: round(float(m["auroc"]), 4) for name, m in manifest.metrics["scores"].items()}


def fid_row(args, run: Path, prior: str) -> float:
    manifest = eval_fid.run(EvalFidConfig(run=run, prior=prior, n=args.fid_n, ref_limit=args.ref_limit, seed=args.seed,
                                          stats_dir=args.root / "fid-stats"))
    return round(float(manifest.metrics["fid"]), 2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="In-distribution data spec, e.g. fashion-mnist:../shared/data/fashion-mnist")
    parser.add_argument("--ood", required=True, help="OOD data spec, e.g. mnist:../shared/data/mnist")
    parser.add_argument("--root", type=Path, default=Path("runs/joint-vs-two-stage"))
    parser.add_argument("--family", default="hvae", choices=("hvae", "vlae", "nvae"))
    parser.add_argument("--steps", type=int, default=1000, help="Backbone updates (both runs).")
    parser.add_argument("--kl-warmup-steps", type=int, default=200)
    parser.add_argument("--prior-steps", type=int, default=1000, help="Two-stage prior updates.")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--fid-n", type=int, default=1000)
    parser.add_argument("--ref-limit", type=int, default=2000)
    parser.add_argument("--k", default="0,1,2")
    parser.add_argument("--ood-limit", type=int, default=None, help="Score N test images of each set (default: all 10,000).")
    parser.add_argument("--name", default="joint_vs_two_stage")
    args = parser.parse_args()
    args.k = tuple(int(k) for k in args.k.split(","))
    wall = train(args)
    runs = folders(args)
    ood = {name: ood_row(args, runs[kind], prior) for name, kind, prior in ROWS}
    fid = {name: fid_row(args, runs[kind], prior) for name, kind, prior in ROWS}
    fid |= {f"reconstructions, {kind} backbone": fid_row(args, run, "recon") for kind, run in runs.items()}
    backbone_metrics = {kind: json.loads((run / "backbone" / "manifest.json").read_text())["metrics"] for kind, run in runs.items()}
    summary = {kind: m["test"] | {"train_wall_s": m.get("train_wall_s"), "device": m.get("device")} for kind, m in backbone_metrics.items()}
    settings = vars(args) | {"root": str(args.root)}
    emit(args.name, {"settings": settings, "train_wall_s": wall, "ood_auroc": ood, "fid": fid, "backbones": summary, "anchors": ANCHORS})


if __name__ == "__main__":
    main()
