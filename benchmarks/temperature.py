"""FID against the sampling temperature tau (NVAE's main knob; the card's `sample --temperature 0.7`).

    python benchmarks/temperature.py --run RUN [--priors gaussian,diffusion] [--taus 0.6,0.7,0.8,0.9,1.0] [--n 5000]
        [--name temperature_<run>]

For each prior and tau: `eval fid` at N images against the backbone's test split (RUN/eval/
fid-<prior>-tau<tau>, resumable: finished evaluations are reused), and a 8x8 sample grid per tau.
Writes RUN/eval/temperature_grid_<prior>.png (one column block per tau, left to right) and
benchmarks/results/<name>.json. Every FID is at the same N; the reference statistics are computed once.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from _common import emit
from PIL import Image

from hebmctl.schemas import EvalFidConfig, SampleConfig
from hebmctl.stages import eval_fid, sample


def side_by_side(grids: list[Path], out: Path, gap_px: int = 8) -> None:
    """Paste grid PNGs left to right with a white gap."""
    images = [Image.open(p).convert("RGB") for p in grids]
    width = sum(im.width for im in images) + gap_px * (len(images) - 1)
    canvas = Image.new("RGB", (width, max(im.height for im in images)), "white")
    x = 0
    for im in images:
        canvas.paste(im, (x, 0))
        x += im.width + gap_px
    canvas.save(out)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--run", type=Path, required=True)
    parser.add_argument("--priors", default="gaussian,diffusion")
    parser.add_argument("--taus", default="0.6,0.7,0.8,0.9,1.0")
    parser.add_argument("--n", type=int, default=5000)
    parser.add_argument("--name", default=None)
    args = parser.parse_args()
    taus = [float(t) for t in args.taus.split(",")]
    table: dict[str, dict[str, float]] = {}
    for prior in args.priors.split(","):
        table[prior], grids = {}, []
        for tau in taus:
            tag = f"{prior}-tau{tau:g}"
            config = EvalFidConfig(run=args.run, prior=prior, n=args.n, temperature=tau, out=args.run / "eval" / f"fid-{tag}")
            manifest = eval_fid.run(config)
            table[prior][f"{tau:g}"] = round(float(manifest.metrics["fid"]), 3)
            samples = args.run / "samples" / f"temperature-{tag}"
            sample.run(SampleConfig(run=args.run, prior=prior, n=64, temperature=tau, out=samples))
            grids.append(samples / "grid.png")
            print(prior, tau, table[prior][f"{tau:g}"], flush=True)
        side_by_side(grids, args.run / "eval" / f"temperature_grid_{prior}.png")
    best = {prior: min(row, key=row.get) for prior, row in table.items()}
    emit(args.name or f"temperature_{args.run.name}", {"run": str(args.run), "n": args.n, "taus": taus, "fid": table, "best_tau": best})


if __name__ == "__main__":
    main()
