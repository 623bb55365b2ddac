"""Cost of one update of joint learning (`pretrain --prior joint`) against backbone-only pretraining.

    OMP_NUM_THREADS=1 python benchmarks/joint_cost.py [--families hvae,vlae] [--steps 10] [--batch-size 128]
        [--prior-k 60] [--posterior-k 20] [--name joint_cost]

Times the pretrain stage's own update (`train_step` of its trainers: batch, loss, backward, optimizer steps, EMA) on
real MNIST training images, same machine, same batch, after 2 warm-up updates, for three modes: `gaussian` (the
backbone alone), `joint` (variational joint learning: q's draw plus K prior Langevin steps in u-space) and
`joint-mle` (posterior Langevin from q, K' steps, plus the prior's K). Reports seconds per update and the ratio to
`gaussian`. Default settings of each family otherwise.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
from _common import SHARED_DATA, emit

from hebmctl.schemas import PretrainConfig
from hebmctl.stages import pretrain


def time_updates(config: PretrainConfig, steps: int, device: torch.device) -> list[float]:
    """Seconds of each of `steps` updates of the stage's trainer (after 2 warm-up updates)."""
    train_set = pretrain.check_inputs(config)[0]
    model = pretrain._fresh_model(config, train_set, device)
    trainer = (pretrain._JointTrainer if config.prior == "joint" else pretrain._Trainer)(config, model, train_set, device, "bench")
    model.train()
    times = []
    for i in range(steps + 2):
        t0 = time.perf_counter()
        record = trainer.train_step()
        if record is None:
            raise RuntimeError(f"{config.backbone} {config.prior}: divergence at update {i} while timing")
        if i >= 2:
            times.append(time.perf_counter() - t0)
    return times


MODES = {
    "gaussian": lambda args: {},
    "joint": lambda args: {"prior": "joint", "prior_langevin_steps": args.prior_k},
    "joint-mle": lambda args: {"prior": "joint", "prior_langevin_steps": args.prior_k, "posterior": "langevin",
                               "posterior_langevin_steps": args.posterior_k},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--families", default="hvae,vlae")
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--prior-k", type=int, default=60)
    parser.add_argument("--posterior-k", type=int, default=20)
    parser.add_argument("--name", default="joint_cost")
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for family in args.families.split(","):
            base = None
            for mode in args.modes.split(","):
                config = PretrainConfig(data=f"mnist:{SHARED_DATA / 'mnist'}", limit=4096, backbone=family, batch_size=args.batch_size,
                                        out=Path(tmp) / f"{family}-{mode}", device=str(device), **MODES[mode](args))
                times = time_updates(config, args.steps, device)
                median = statistics.median(times)
                base = median if mode == "gaussian" else base
                rows.append({"family": family, "mode": mode, "s_per_update_median": round(median, 4),
                             "s_per_update_mean": round(statistics.mean(times), 4), "s_per_update_min": round(min(times), 4),
                             "ratio_to_gaussian": round(median / base, 2) if base else None,
                             "prior_langevin_steps": config.prior_langevin_steps,
                             "posterior_langevin_steps": config.posterior_langevin_steps})
                print(rows[-1], flush=True)
    emit(args.name, {"settings": vars(args), "batch_size": args.batch_size, "device": str(device), "rows": rows,
                     "note": "medians over the timed updates; machine.load_average_1_5_15_min says how busy the cores were"})


if __name__ == "__main__":
    main()
