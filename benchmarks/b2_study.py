"""Issue 16 item 5: the diffusion prior's step-size scale b2 against FID and diversity.

    python benchmarks/b2_study.py --run RUN [--b2 3e-5,3e-4,3e-3,1e-2,3e-2] [--steps 1500] [--batch-size 128] [--n 1000]

Needs RUN/backbone and RUN/latents (`hebmctl cache-latents --run RUN`) and the full test split's FID statistics in
RUN/fid-stats (computed on first use). For each b2, trains `RUN/priors/diffusion-b2-<b2>` (`hebmctl train-prior --run RUN
--name diffusion-b2-<b2> --scheme diffusion --b2 <b2> --steps S --batch-size B --device cpu`; defaults otherwise: T = 3,
drl schedule, K = 30; resumable, an up-to-date prior is reused) and scores N samples at the training K: FID against the
test split (as `hebmctl eval fid --n N`), improved precision/recall (k = 3, against N real test images) and class
coverage by a classifier trained on the real training images (benchmarks/_sample_quality.py). The Gaussian
prior (--gaussian) and N real training images (--real) give the reference rows. Also records the training step sizes
s_t and the Langevin noise a K-step chain injects per level, sqrt(K) s_t. Writes benchmarks/results/b2_study.json.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

from _common import emit
from _sample_quality import Evaluator

from hebmctl.samplers import anchor_step_sizes_sq, make_schedule
from hebmctl.schemas import TrainPriorConfig
from hebmctl.stages import train_prior


def train(run: Path, b2: str, steps: int, batch_size: int) -> dict:
    manifest = train_prior.run(TrainPriorConfig(run=run, name=f"diffusion-b2-{b2}", scheme="diffusion", b2=float(b2), steps=steps,
                                                batch_size=batch_size, device="cpu"))
    metrics = manifest.metrics or {}
    return {"train_metrics": {k: metrics[k] for k in sorted(metrics) if isinstance(metrics[k], (int, float, str))}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, required=True)
    parser.add_argument("--b2", default="3e-5,3e-4,3e-3,1e-2,3e-2")
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--gaussian", action="store_true", help="also score the Gaussian prior (no EBM)")
    parser.add_argument("--real", action="store_true", help="also score N real training images (the metrics' ceiling at this N)")
    args = parser.parse_args()
    evaluator = Evaluator(args.run, args.n)
    schedule = make_schedule("drl", 3)
    rows = {}
    for b2 in args.b2.split(","):
        row = train(args.run, b2, args.steps, args.batch_size)
        s = anchor_step_sizes_sq(schedule, float(b2)).sqrt().tolist()
        row |= {"step_sizes": s, "chain_noise_sqrtK_s": [math.sqrt(30) * v for v in s]}
        rows[b2] = row | evaluator.evaluate(f"diffusion-b2-{b2}")
    emit("b2_study", {"run": str(args.run), "n": args.n, "steps": args.steps, "batch_size": args.batch_size,
                      "fid_reference": str(evaluator.stats_folder), "classifier": evaluator.classifier_record,
                      "gaussian": evaluator.evaluate("gaussian") if args.gaussian else None,
                      "real": evaluator.real_baseline() if args.real else None, "by_b2": rows})


if __name__ == "__main__":
    main()
