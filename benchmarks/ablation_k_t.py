"""Diff-EBM Tab. 3 ablation: FID and sampling time against Langevin steps K and diffusion steps T.

    python benchmarks/ablation_k_t.py --run RUN [--T 1,3,6] [--K 10,30,50] [--n 5000] [--prior-steps 4000]

Needs a run folder with a backbone and a latent cache (e.g. from `hebmctl pipeline`). Trains one
diffusion prior per T (`RUN/priors/ablation-T<T>`, defaults otherwise), scores every T at the
training K, and the T = 3 prior at each K (step sizes scaled by sqrt(K_train / K), as `sample`
does), with `eval fid` at equal N against the backbone's test split. Sampling seconds per 1,000
images come from the evaluations. Writes benchmarks/results/ablation_k_t.json. Resumable.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from _common import emit

from hebmctl.schemas import EvalFidConfig, TrainPriorConfig
from hebmctl.stages import eval_fid, train_prior


def fid_row(run: Path, prior: str, n: int, k: int | None) -> dict:
    out = run / "eval" / f"ablation-{prior}-K{k or 'train'}-n{n}"
    result = eval_fid.run(EvalFidConfig(run=run, prior=prior, n=n, langevin_steps=k, out=out)).metrics
    return {"fid": result["fid"], "sample_s_per_1000": round(1000 * result["generate_s"] / result["n"], 2), "n": result["n"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, required=True)
    parser.add_argument("--T", default="1,3,6")
    parser.add_argument("--K", default="10,30,50")
    parser.add_argument("--n", type=int, default=5000)
    parser.add_argument("--prior-steps", type=int, default=4000)
    args = parser.parse_args()
    rows_t, rows_k = {}, {}
    for T in [int(t) for t in args.T.split(",")]:
        name = f"ablation-T{T}"
        train_prior.run(TrainPriorConfig(run=args.run, scheme="diffusion", T=T, name=name, steps=args.prior_steps))
        rows_t[T] = fid_row(args.run, name, args.n, None)
    for K in [int(k) for k in args.K.split(",")]:
        rows_k[K] = fid_row(args.run, "ablation-T3", args.n, K)
    emit("ablation_k_t", {"run": str(args.run), "n": args.n, "prior_steps": args.prior_steps, "by_T_at_training_K": rows_t, "by_K_at_T3": rows_k})


if __name__ == "__main__":
    main()
