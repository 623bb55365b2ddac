"""Top-down vs bottom-up inference for the hvae backbone, at equal steps, on Fashion-MNIST.

    python benchmarks/backbone_inference.py [--steps 1500] [--out /tmp/hebm-bench-inference]

Trains one backbone per inference scheme with otherwise default settings and reports test
reconstruction MSE, ELBO, KL per layer and active units per layer (issue 2 asks to decide by
measurement which one is the default).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from _common import SHARED_DATA, emit

from hebmctl.schemas import PretrainConfig
from hebmctl.stages import pretrain


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--out", type=Path, default=Path("/tmp/hebm-bench-inference"))
    args = parser.parse_args()
    results = {}
    for inference in ("top-down", "bottom-up"):
        config = PretrainConfig(
            out=args.out / inference, data=f"fashion-mnist:{SHARED_DATA / 'fashion-mnist'}", inference=inference,
            steps=args.steps, kl_warmup_steps=min(1000, args.steps // 2), checkpoint_every=args.steps,
        )
        manifest = pretrain.run(config)
        results[inference] = {"test": manifest.metrics["test"], "train_wall_s": manifest.metrics["train_wall_s"]}
    emit("backbone_inference", {"steps": args.steps, "data": "fashion-mnist", "results": results})


if __name__ == "__main__":
    main()
