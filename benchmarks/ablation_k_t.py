"""Diff-EBM Tab. 3 ablation: FID and sampling time against Langevin steps K and diffusion steps T.

    python benchmarks/ablation_k_t.py --run RUN [--T 1,3,6] [--K 10,30,50] [--n 5000] [--prior-steps 4000]

Needs a run folder with a backbone and a latent cache (e.g. from `hebmctl pipeline`). Trains one
diffusion prior per T (`RUN/priors/ablation-T<T>`, defaults otherwise), scores every T at the
training K, and the T = 3 prior at each K (step sizes scaled by sqrt(K_train / K), as `sample`
does), with `eval fid` at equal N against the backbone's test split. Sampling seconds per 1,000
images come from the evaluations. The T = 3 prior is `RUN/priors/diffusion` (the pipeline's default
diffusion prior: reused when it was trained with the same settings), the others
`RUN/priors/diffusion-T<T>`; at the training K the evaluation is the default `RUN/eval/fid-<prior>`,
so results the pipeline already computed are reused. Writes benchmarks/results/ablation_k_t.json.
Resumable.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from _common import emit

from hebmctl.io.manifest import has_manifest, read_manifest
from hebmctl.schemas import EvalFidConfig, PriorManifest, TrainPriorConfig
from hebmctl.stages import eval_fid, train_prior


def prior_name(T: int) -> str:
    return "diffusion" if T == 3 else f"diffusion-T{T}"


def prior_manifest(run: Path, T: int, steps: int) -> PriorManifest:
    """The diffusion prior with T levels: an existing complete RUN/priors/diffusion for T = 3, else trained (resumable)."""
    folder = run / "priors" / prior_name(T)
    if T == 3 and has_manifest(folder):
        manifest, _ = read_manifest(folder, PriorManifest)
        if manifest.config.scheme == "diffusion" and manifest.config.T == 3:
            return manifest
    return train_prior.run(TrainPriorConfig(run=run, scheme="diffusion", T=T, name=prior_name(T), steps=steps))


def fid_row(run: Path, prior: str, n: int, k: int | None, training_k: int) -> dict:
    """FID and sampling time of `prior` with K = k (None or the training K: the default evaluation folder)."""
    if k is None or k == training_k:
        config = EvalFidConfig(run=run, prior=prior, n=n)
    else:
        config = EvalFidConfig(run=run, prior=prior, n=n, langevin_steps=k, out=run / "eval" / f"fid-{prior}-K{k}")
    result = eval_fid.run(config).metrics
    return {"fid": result["fid"], "K": k or training_k, "sample_s_per_1000": round(1000 * result["generate_s"] / result["n"], 2),
            "n": result["n"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, required=True)
    parser.add_argument("--T", default="1,3,6")
    parser.add_argument("--K", default="10,30,50")
    parser.add_argument("--n", type=int, default=5000)
    parser.add_argument("--prior-steps", type=int, default=4000)
    args = parser.parse_args()
    rows_t, rows_k = {}, {}
    training_k = {}
    for T in sorted({int(t) for t in args.T.split(",")} | {3}):
        training_k[T] = prior_manifest(args.run, T, args.prior_steps).config.langevin_steps
        if str(T) in args.T.split(","):
            rows_t[T] = fid_row(args.run, prior_name(T), args.n, None, training_k[T])
    for K in [int(k) for k in args.K.split(",")]:
        rows_k[K] = fid_row(args.run, prior_name(3), args.n, K, training_k[3])
    emit("ablation_k_t", {"run": str(args.run), "n": args.n, "prior_steps": args.prior_steps, "by_T_at_training_K": rows_t,
                          "by_K_at_T3": rows_k})


if __name__ == "__main__":
    main()
