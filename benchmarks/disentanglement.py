"""MIG / MIG-sup per backbone family on `builtin:shapes` (issue 15's benchmark).

    python benchmarks/disentanglement.py [--families vlae,hvae,nvae] [--steps 3000] [--seeds 0]
        [--root runs/shapes] [--extra FAMILY:KEY=VALUE[,KEY=VALUE]] [--name disentanglement_shapes]

For each family and seed: `pretrain` on builtin:shapes (32x32 RGB; the family's defaults otherwise),
then `eval disentanglement` on the test split (10,000 images). Runs go to ROOT-<family>-s<seed> and
are resumable (a finished stage is reused). `--extra` adds pretrain options to one family's runs,
e.g. `--extra vlae:prior=joint` once joint learning exists (run folder ROOT-<family>-<key><value>-s<seed>).

A two-stage EBM prior does not change the encoder, so its posterior-mean codes, and therefore its
MIG, equal the Gaussian-prior backbone's: only a prior learned jointly with the backbone can move MIG.

Writes benchmarks/results/<name>.json: per run MIG, MIG-sup (active dims and all dims), per layer
scores, the factor x layer table (max normalised MI of one dimension of the layer) and the layer of
each factor; mean and std over seeds per family.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

from _common import emit

from hebmctl.schemas import EvalDisentanglementConfig, PretrainConfig
from hebmctl.stages import eval_disentanglement, pretrain

LAYER_KEYS = ("dims", "active_dims", "mig", "mig_sup", "mig_sup_all_dims")
ANCHORS = {"Hier-EBM (3DShapes)": {"mig": 0.554, "mig_sup": 0.672}, "pro-VLAE (3DShapes)": {"mig": 0.357, "mig_sup": 0.406}}


def parse_extra(items: list[str]) -> dict[str, dict[str, str]]:
    """'vlae:prior=joint,kl_warmup_steps=500' -> {'vlae': {'prior': 'joint', 'kl_warmup_steps': '500'}}."""
    extra: dict[str, dict[str, str]] = {}
    for item in items:
        family, _, options = item.partition(":")
        extra[family] = dict(option.split("=", 1) for option in options.split(",") if option)
    return extra


def run_one(root: str, family: str, seed: int, steps: int, options: dict[str, str]) -> dict:
    tag = "".join(f"-{k}{v}" for k, v in sorted(options.items()))
    run = Path(f"{root}-{family}{tag}-s{seed}")
    start = time.perf_counter()
    backbone = pretrain.run(PretrainConfig(run=run, data="builtin:shapes", backbone=family, steps=steps, seed=seed, **options))
    train_s = time.perf_counter() - start
    result = eval_disentanglement.run(EvalDisentanglementConfig(run=run)).metrics
    return {
        "run": str(run), "family": family, "seed": seed, "options": options, "steps": steps, "pretrain_s": round(train_s, 1),
        "test": backbone.metrics["test"],
        "mig": result["mig"], "mig_sup": result["mig_sup"], "mig_sup_all_dims": result["mig_sup_all_dims"],
        "layers": {name: {k: s[k] for k in LAYER_KEYS} for name, s in result["layers"].items()},
        "factor_layer_nmi": result["factor_layer_nmi"], "layer_of_factor": result["layer_of_factor"],
    }


def summarise(rows: list[dict]) -> dict:
    """Mean and std over seeds of MIG and MIG-sup per (family, options)."""
    groups: dict[str, list[dict]] = {}
    for row in rows:
        key = row["family"] + "".join(f" {k}={v}" for k, v in sorted(row["options"].items()))
        groups.setdefault(key, []).append(row)
    summary = {}
    for key, members in groups.items():
        summary[key] = {"seeds": [m["seed"] for m in members]}
        for metric in ("mig", "mig_sup"):
            values = [m[metric] for m in members if m[metric] is not None]
            summary[key][metric] = {"mean": statistics.fmean(values) if values else None,
                                    "std": statistics.stdev(values) if len(values) > 1 else 0.0, "values": values}
    return summary


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--families", default="vlae,hvae,nvae")
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--root", default="runs/shapes")
    parser.add_argument("--extra", action="append", default=[])
    parser.add_argument("--name", default="disentanglement_shapes")
    args = parser.parse_args()
    extra = parse_extra(args.extra)
    rows = []
    for family in args.families.split(","):
        for seed in (int(s) for s in args.seeds.split(",")):
            rows.append(run_one(args.root, family, seed, args.steps, extra.get(family, {})))
            print(family, seed, rows[-1]["mig"], rows[-1]["mig_sup"], rows[-1]["layer_of_factor"], flush=True)
    emit(args.name, {"data": "builtin:shapes", "steps": args.steps, "summary": summarise(rows), "runs": rows, "anchors": ANCHORS})


if __name__ == "__main__":
    main()
