"""Sampler overhead: one Langevin step vs one bare forward+backward of F(T(u)), same batch.

    python benchmarks/langevin_overhead.py [--backbone DIR] [--prior DIR] [--batch-size 256]

Issue 3 targets: sampler overhead <= 1.3x; also reports sampling throughput (images/s, decode
included) for the diffusion scheme with T = 3, K = 30. Without --backbone/--prior, default-size
networks with random weights are used (timings do not depend on the weights). CPU always; CUDA too
when present.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from _common import emit

from hebmctl.models.energy import JointEnergy
from hebmctl.models.hvae import HierarchicalVAE
from hebmctl.samplers import anchor_step_sizes_sq, conditional_log_density, drl_schedule, langevin, reverse_diffusion_sample
from hebmctl.stages.artifacts import load_backbone, load_prior


def networks(args: argparse.Namespace, device: torch.device) -> tuple[HierarchicalVAE, JointEnergy]:
    if args.backbone is not None:
        backbone = load_backbone(args.backbone, device)
        if args.prior is not None:
            return backbone.model, load_prior(args.prior, backbone, device).energy
        model = backbone.model
    else:
        model = HierarchicalVAE((28, 28, 1), (64, 32, 16)).to(device).eval().requires_grad_(False)
    energy = JointEnergy(model.group_dims, width=200, depth=2, n_levels=3).to(device).eval().requires_grad_(False)
    return model, energy


def timed(fn, repeats: int, device: torch.device) -> float:
    """Median seconds of fn() over `repeats` runs after 3 warm-ups."""
    for _ in range(3):
        fn()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]


def measure(device: torch.device, args: argparse.Namespace) -> dict:
    model, energy = networks(args, device)
    g = torch.Generator(device=device).manual_seed(0)
    batch = args.batch_size
    u = torch.randn(batch, model.latent_dim, generator=g, device=device)
    t = torch.zeros(batch, dtype=torch.long, device=device)
    schedule = drl_schedule(3).to(device)
    s_sq = anchor_step_sizes_sq(schedule).to(device)
    G = lambda v, tt: energy(model.u_to_z(v), tt)  # noqa: E731

    def bare() -> None:
        v = u.detach().requires_grad_(True)
        torch.autograd.grad(G(v, t).sum(), v)

    log_p = conditional_log_density(G, u, t, schedule, s_sq)
    steps = 20
    bare_s = timed(bare, 30, device)
    step_s = timed(lambda: langevin(log_p, u, steps, float(s_sq[0].sqrt()), g), 10, device) / steps

    def sample_images() -> None:
        u_top = torch.randn(args.sample_batch, model.latent_dim, generator=g, device=device)
        u0, _ = reverse_diffusion_sample(G, u_top, schedule, s_sq, 30, g)
        with torch.no_grad():
            model.decode(model.u_to_z(u0))

    sample_s = timed(sample_images, 3, device)
    return {"batch_size": batch, "bare_forward_backward_ms": round(bare_s * 1e3, 3), "langevin_step_ms": round(step_s * 1e3, 3),
            "overhead_ratio": round(step_s / bare_s, 3), "target_ratio": 1.3,
            "sampling_T3_K30": {"batch_size": args.sample_batch, "seconds": round(sample_s, 3),
                                "images_per_s": round(args.sample_batch / sample_s, 1)}}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--backbone", type=Path)
    parser.add_argument("--prior", type=Path)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--sample-batch", type=int, default=500)
    args = parser.parse_args()
    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    results = {d.type: measure(d, args) for d in devices}
    emit("langevin_overhead", {"backbone": str(args.backbone), "prior": str(args.prior), "results": results})


if __name__ == "__main__":
    main()
