"""Issue 16 "Cooperative pays": FID against the sampling Langevin steps K' for the diffusion and cooperative priors
(CDRL Tab. 5 shape), with sampling speed measured on the same machine in the same run.

    python benchmarks/coop_fid_vs_k.py --run RUN [--K 30,10,3,5] [--steps 1500] [--batch-size 128] [--n 1000]
        [--speed-n 1000] [--speed-reps 3] [--b2 3e-5] [--name NAME]

Trains (or reuses) `RUN/priors/{diffusion,cooperative}-b2-<b2>` (`hebmctl train-prior --run RUN --name SCHEME-b2-<b2>
--scheme SCHEME --b2 <b2> --steps S --batch-size B --device cpu`, defaults otherwise: T = 3, drl, K = 30; the
cooperative prior with shared-noise pairs and no Tweedie step, its defaults), then for each K' (in the order given, so
a cut-short run has the most important points) scores N samples with `--langevin-steps K'` (each step scaled by
sqrt(K / K'), CDRL's adjustment, as `sample` does): FID against the test split exactly as `hebmctl eval fid --n N`,
precision/recall and class coverage (benchmarks/_sample_quality.py); the cooperative EBMs are also sampled without the
initializer at --without-initializer-K (the proposals' share of the result). Speed: `priors.sample_batches` (sampling and
decoding, what `sample` does before writing PNGs) of speed-n images in batches of 500, for every (scheme, K')
interleaved, repeated speed-reps times, measured before the evaluations and cached in RUN/bench (--only speed
measures them alone); images/s by wall clock and by the process's CPU time (one torch thread, so CPU
time is the work done and is robust to other jobs sharing the cores). Writes benchmarks/results/<name>.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
from _common import emit
from _sample_quality import DEVICE, Evaluator

from hebmctl import priors
from hebmctl.schemas import TrainPriorConfig
from hebmctl.stages import train_prior
from hebmctl.stages.artifacts import load_backbone, open_prior

SCHEMES = ("diffusion", "cooperative")


def speed(run: Path, names: dict[str, str], ks: list[int], n: int, reps: int) -> dict:
    backbone = load_backbone(run / "backbone", DEVICE)
    samplers = {(s, k): open_prior(run / "priors" / names[s], backbone, DEVICE, priors.SamplingOptions(k, None, None))[0]
                for s in SCHEMES for k in ks}
    times: dict[tuple[str, int], list[tuple[float, float]]] = {key: [] for key in samplers}
    for _ in range(reps):
        for key, prior in samplers.items():
            wall, cpu = time.perf_counter(), time.process_time()
            for _batch in priors.sample_batches(prior, n, 500, 0, 1.0):
                pass
            times[key].append((time.perf_counter() - wall, time.process_time() - cpu))
    return {f"{s}-K{k}": {"images_per_s_wall": [round(n / w, 1) for w, _ in times[(s, k)]],
                          "images_per_s_cpu": [round(n / c, 1) for _, c in times[(s, k)]],
                          "median_images_per_s_wall": round(n / statistics.median(w for w, _ in times[(s, k)]), 1),
                          "median_images_per_s_cpu": round(n / statistics.median(c for _, c in times[(s, k)]), 1)}
            for s, k in samplers}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, required=True)
    parser.add_argument("--K", default="30,10,3,5")
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--b2", default="3e-5")
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--speed-n", type=int, default=1000)
    parser.add_argument("--speed-reps", type=int, default=3)
    parser.add_argument("--name", default="coop_fid_vs_k")
    parser.add_argument("--without-initializer-K", default="30", help="K' at which the cooperative EBMs are also sampled "
                        "without the initializer (each chain from u_{t+1}, as the diffusion scheme); empty: none")
    parser.add_argument("--only", choices=("all", "speed"), default="all", help="speed: measure (and cache) the speeds only")
    args = parser.parse_args()
    torch.set_num_threads(1)
    names = {s: f"{s}-b2-{args.b2}" for s in SCHEMES}
    trained = {}
    for scheme, name in names.items():
        manifest = train_prior.run(TrainPriorConfig(run=args.run, name=name, scheme=scheme, b2=float(args.b2), steps=args.steps,
                                                    batch_size=args.batch_size, device="cpu"))
        trained[scheme] = {"train_K": manifest.config.langevin_steps, "metrics": manifest.metrics}
    ks = [int(k) for k in args.K.split(",")]
    speed_path = args.run / "bench" / f"speed-K{'_'.join(map(str, sorted(ks)))}-n{args.speed_n}-r{args.speed_reps}.json"
    if not speed_path.exists():
        speed_path.parent.mkdir(parents=True, exist_ok=True)
        speed_path.write_text(json.dumps(speed(args.run, names, sorted(ks), args.speed_n, args.speed_reps), indent=2))
    if args.only == "speed":
        print(speed_path.read_text())
        return
    evaluator = Evaluator(args.run, args.n)
    # K' = the training K is the default sampler (the b2 study's rows reuse those results)
    curve = {f"{s}-K{k}": evaluator.evaluate(names[s], None if k == trained[s]["train_K"] else k) for k in ks for s in SCHEMES}
    no_init = [int(k) for k in args.without_initializer_K.split(",") if k]
    curve |= {f"cooperative-without-initializer-K{k}": evaluator.evaluate(names["cooperative"], k, without_initializer=True)
              for k in no_init}
    emit(args.name, {"run": str(args.run), "n": args.n, "b2": args.b2, "steps": args.steps, "batch_size": args.batch_size,
                     "trained": trained, "classifier": evaluator.classifier_record, "fid_vs_K": curve,
                     "speed": json.loads(speed_path.read_text())})


if __name__ == "__main__":
    main()
