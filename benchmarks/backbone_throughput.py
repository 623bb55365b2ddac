"""Training and prior-sampling cost of every backbone family, on real images.

    python benchmarks/backbone_throughput.py [--data fashion-mnist] [--steps 20] [--batch-size 128]
        [--families hvae,nvae,vlae] [--name backbone_throughput] [--data-root ../shared/data]

For each family (default settings of `hebmctl pretrain --backbone F`): training images/s (one
optimizer step = ELBO forward + backward + AdamW, the pretrain stage's own loss), the number of
parameters and latent dimensions, and the cost of one Langevin-style step in u-space (forward of
T and the decoder-free energy path + gradient w.r.t. u, batch 256): the unit every EBM prior pays K
times per update. Peak RSS of the process is reported at the end (ru_maxrss, all families together).
Runs on CUDA when present (then also on the CPU path is not timed); say which machine in the result.
"""

from __future__ import annotations

import argparse
import resource
import time
from pathlib import Path

import torch
from _common import SHARED_DATA, emit

from hebmctl.data import load_split, to_unit_range
from hebmctl.schemas import PretrainConfig
from hebmctl.stages.artifacts import build_backbone

DATA = {"fashion-mnist": "fashion-mnist", "mnist": "mnist", "cifar10": "cifar10-jpg.zip"}
"""Data set kind -> its file or folder under --data-root."""


def time_training(model, images: torch.Tensor, steps: int, batch_size: int, device: torch.device) -> float:
    """Images/s of pretrain's step (calibrated ELBO, backward, AdamW) after 3 warm-up steps."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    generator = torch.Generator(device=device).manual_seed(0)

    def step(i: int) -> None:
        x = to_unit_range(images[(i * batch_size) % (len(images) - batch_size):][:batch_size]).to(device)
        terms = model.elbo_terms(x, generator, calibrate=True)
        loss = terms.recon_nll.mean() + terms.kl.sum(-1).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    for i in range(3):
        step(i)
    _sync(device)
    start = time.perf_counter()
    for i in range(steps):
        step(i)
    _sync(device)
    return steps * batch_size / (time.perf_counter() - start)


def time_u_gradient(model, steps: int, device: torch.device, batch: int = 256) -> float:
    """Milliseconds of one gradient of sum(T(u)^2) w.r.t. u (the u -> z part of a Langevin step)."""
    model.requires_grad_(False)
    u = torch.randn(batch, model.latent_dim, device=device)

    def step() -> None:
        v = u.detach().requires_grad_(True)
        (grad,) = torch.autograd.grad((model.u_to_z(v) ** 2).sum(), v)
        grad.sum().item()

    step()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return 1000 * (time.perf_counter() - start) / steps


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", default="fashion-mnist", choices=sorted(DATA))
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--families", default="hvae,nvae,vlae")
    parser.add_argument("--name", default="backbone_throughput")
    parser.add_argument("--data-root", type=Path, default=SHARED_DATA,
                        help="Folder holding the data sets (default ../shared/data; a copy in local-data/ on a GPU machine).")
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    spec = f"{args.data}:{args.data_root / DATA[args.data]}"
    images = torch.from_numpy(load_split(spec, "train", (), 4096).images)
    rows = {}
    for family in args.families.split(","):
        config = PretrainConfig(data=spec, backbone=family)
        torch.manual_seed(0)
        model = build_backbone(config, tuple(images.shape[1:])).to(device)
        rows[family] = {
            "train_images_per_s": round(time_training(model, images, args.steps, args.batch_size, device), 1),
            "u_to_z_grad_ms_batch256": round(time_u_gradient(model, args.steps, device), 2),
            "parameters": sum(p.numel() for p in model.parameters()),
            "latent_dims": list(model.group_dims),
            "group_shapes": [list(s) for s in model.group_shapes],
            "minutes_for_default_steps": None,
        }
        rows[family]["minutes_for_default_steps"] = round(config.steps * args.batch_size / rows[family]["train_images_per_s"] / 60, 1)
        print(family, rows[family], flush=True)
    emit(args.name, {"data": args.data, "device": str(device), "batch_size": args.batch_size, "steps_timed": args.steps,
                     "families": rows, "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)})


if __name__ == "__main__":
    main()
