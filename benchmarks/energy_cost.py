"""Cost of one Langevin step in u-space for several energy networks on one backbone.

    python benchmarks/energy_cost.py --backbone runs/mnist-nvae/backbone [--batch-size 64] [--repeats 5]
        [--energies 64x2,128x8] [--name energy_cost]

A Langevin step of an EBM prior on a spatial backbone is the gradient of G(u, t) = F(T(u), t) with respect
to u: the backbone's top-down path T and the energy F, forward and backward. This times that gradient for
the diffusion scheme's energy with each `CHANNELSxDEPTH` conv setting (`train-prior --conv-channels
--conv-depth`; the vector groups keep the default MLP), against the u -> z part alone (F = sum of squares),
interleaved in one process so that every setting sees the same machine load. Medians of `--repeats`
timings of 3 steps each. A prior update costs about K (x T levels for sampling) of these steps, so the
ratios say what a setting costs before any training is run. Diff-EBM's CIFAR-10 recipe uses 128 channels
and 4 residual blocks (8 convolutions): `128x8` times the same number of convolutions without the skips.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
from _common import emit

from hebmctl import priors
from hebmctl.schemas import TrainPriorConfig
from hebmctl.stages.artifacts import load_backbone


def _setting(text: str) -> tuple[int, int]:
    channels, depth = text.lower().split("x")
    return int(channels), int(depth)


def step_ms(gradient, u: torch.Tensor) -> float:
    """Milliseconds of one call of `gradient(u)`: 3 calls, timed together."""
    start = time.perf_counter()
    for _ in range(3):
        gradient(u)
    return 1000 * (time.perf_counter() - start) / 3


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--backbone", type=Path, required=True)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--energies", default="64x2,128x8", help="comma-separated CHANNELSxDEPTH conv settings")
    parser.add_argument("--name", default="energy_cost")
    args = parser.parse_args()
    device = torch.device("cpu")
    model = load_backbone(args.backbone, device).model.requires_grad_(False)
    u = torch.randn(args.batch_size, model.latent_dim, generator=torch.Generator().manual_seed(0))
    t = torch.zeros(args.batch_size, dtype=torch.long)

    def grad_of(function):
        def gradient(u0: torch.Tensor) -> torch.Tensor:
            v = u0.detach().requires_grad_(True)
            return torch.autograd.grad(function(v).sum(), v)[0]
        return gradient

    settings = [_setting(s) for s in args.energies.split(",")]
    gradients = {"T only": grad_of(lambda v: model.u_to_z(v).pow(2).sum(-1))}
    parameters = {}
    for channels, depth in settings:
        config = TrainPriorConfig(backbone=args.backbone, latents=args.backbone, out=Path("unused"), scheme="diffusion",
                                  conv_channels=channels, conv_depth=depth)
        energy = priors.for_training(config, model, device).energy.requires_grad_(False)
        gradients[f"{channels}x{depth}"] = grad_of(lambda v, e=energy: e(model.u_to_z(v), t))
        parameters[f"{channels}x{depth}"] = sum(p.numel() for p in energy.parameters())
    for gradient in gradients.values():
        gradient(u)  # warm-up, once per setting
    timings = {name: [] for name in gradients}
    for _ in range(args.repeats):  # interleaved: every setting sees the same load
        for name, gradient in gradients.items():
            timings[name].append(step_ms(gradient, u))
    median = {name: statistics.median(ms) for name, ms in timings.items()}
    emit(args.name, {
        "command": "python benchmarks/energy_cost.py " + " ".join(f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items()),
        "backbone": str(args.backbone), "batch_size": args.batch_size, "threads": torch.get_num_threads(),
        "langevin_step_ms": {k: round(v, 2) for k, v in median.items()},
        "energy_parameters": parameters,
        "ratio_to_first_setting": {k: round(v / median[f"{settings[0][0]}x{settings[0][1]}"], 2) for k, v in median.items()},
        "timings_ms": {k: [round(x, 2) for x in v] for k, v in timings.items()},
    })


if __name__ == "__main__":
    main()
