"""How far are prior samples from the posterior codes, in u-space? (a diagnostic for the prior hole)

    python benchmarks/latent_frechet.py --run RUN [--priors gaussian,diffusion,joint] [--n 5000] [--name NAME]

For each prior, draws N samples with the `sample` stage (written to RUN/samples/<prior>-n<N>, reused
when complete) and computes the Fréchet distance (second moments only, the FID formula without the
Inception network) between their u_0 and N posterior codes u_0 of the training images (the latent
cache, first N rows), per latent group and for all groups together. The baseline row compares two
disjoint sets of N posterior codes: the distance that sampling noise alone gives. A prior that
fills the prior hole moves towards that baseline. Writes benchmarks/results/<name>.json
(default latent_frechet_<run folder name>).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import h5py
import numpy as np
from _common import emit
from safetensors.numpy import load_file

from hebmctl.metrics.fid import feature_statistics, frechet_distance
from hebmctl.schemas import SampleConfig
from hebmctl.stages import sample


def posterior_codes(run: Path, n_rows: int) -> tuple[np.ndarray, list[int]]:
    """u_0 of the first n_rows training images [n_rows, D] (first posterior draw) and the group sizes."""
    with h5py.File(run / "latents" / "train.h5", "r") as store:
        if store["u0"].shape[0] < n_rows:
            raise SystemExit(f"{run}/latents/train.h5 holds {store['u0'].shape[0]} codes; --n {n_rows // 2} needs {n_rows}.")
        return store["u0"][:n_rows, 0, :], [int(d) for d in store.attrs["group_dims"]]


def prior_codes(run: Path, prior: str, n: int) -> np.ndarray:
    """u_0 of n samples of `prior` [n, D], drawn with the sample stage (seed 0)."""
    out = run / "samples" / f"{prior}-n{n}"
    sample.run(SampleConfig(run=run, prior=prior, n=n, out=out))
    return load_file(str(out / "latents.safetensors"))["u0"]


def distances(reference: np.ndarray, codes: np.ndarray, group_dims: list[int]) -> dict[str, float]:
    """Fréchet distance per group ('z1', ...) and over all of u_0 ('all'); both arrays [N, D]."""
    edges = np.cumsum([0, *group_dims])
    slices = {f"z{i + 1}": slice(a, b) for i, (a, b) in enumerate(zip(edges[:-1], edges[1:]))} | {"all": slice(0, edges[-1])}
    return {name: round(frechet_distance(*feature_statistics(reference[:, cut]), *feature_statistics(codes[:, cut])), 3)
            for name, cut in slices.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, required=True)
    parser.add_argument("--priors", default="gaussian,diffusion,joint", help="Comma-separated: 'gaussian' and prior names under "
                                                                             "RUN/priors/.")
    parser.add_argument("--n", type=int, default=5000)
    parser.add_argument("--name", default=None)
    args = parser.parse_args()
    codes, group_dims = posterior_codes(args.run, 2 * args.n)
    reference, held_out = codes[: args.n], codes[args.n :]
    rows = {"posterior (other half)": distances(reference, held_out, group_dims)}
    for prior in [p for p in args.priors.split(",") if p]:
        rows[prior] = distances(reference, prior_codes(args.run, prior, args.n), group_dims)
    emit(args.name or f"latent_frechet_{args.run.name}", {"run": str(args.run), "n": args.n, "group_dims": group_dims,
                                                          "frechet_distance": rows})


if __name__ == "__main__":
    main()
