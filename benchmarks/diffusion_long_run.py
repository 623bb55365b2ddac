"""Why does the diffusion prior's t = 0 long run (`sample --trajectory`) diverge? (issue 16 item 5)

    python benchmarks/diffusion_long_run.py --run RUN [--prior diffusion] [--steps 2500] [--step-scale 1 0.5] [--name NAME]

Starts exactly as `hebmctl sample --trajectory` does (seed + 17, 8 chains, reverse diffusion, then
Langevin on log p(u_0 | u_1) = G(T(u_0), 0) / s_0^2 - Q(u_0) given the chain's own u_1, DESIGN §3) and
records every `--every` steps: the batch mean of G(T(u), 0), |u| (all, and per latent group), max |z|,
and the two drift terms of one Langevin step, |0.5 grad G| (energy) against |0.5 s_0^2 grad Q| (the
Gaussian and kernel terms). For reference it also gives the range of G(T(u), 0) on posterior codes
u ~ q(u | x) of 500 test images (the data's energies). Writes benchmarks/results/<name>.json.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from _common import emit, machine

from hebmctl.data import load_split, to_unit_range
from hebmctl.priors import SamplingOptions
from hebmctl.samplers import langevin
from hebmctl.stages.artifacts import load_backbone, open_prior

GRID = 8


def data_energies(prior, backbone, n: int = 500) -> dict:
    """Quantiles of G(T(u), 0) over posterior codes of the first n test images."""
    images = load_split(backbone.manifest.config.data, "test", limit=n).images
    with torch.no_grad():
        z, _ = backbone.model.posterior(to_unit_range(images), torch.Generator().manual_seed(0), sample=True)
        u = backbone.model.z_to_u(z)
        g = prior.neg_energy_on_u(u, torch.zeros(n, dtype=torch.long)).numpy()
    return {"q01": float(np.quantile(g, 0.01)), "median": float(np.median(g)), "q99": float(np.quantile(g, 0.99)),
            "u_norm_median": float(u.norm(dim=1).median())}


def drift_norms(prior, log_density, u: torch.Tensor, s0_sq: float) -> tuple[float, float]:
    """Batch-mean norms of the energy drift 0.5 grad G and of the restoring drift 0.5 s_0^2 grad Q of one step."""
    u = u.detach().requires_grad_(True)
    t0 = torch.zeros(u.shape[0], dtype=torch.long)
    (grad_g,) = torch.autograd.grad(prior.neg_energy_on_u(u, t0).sum(), u)
    (grad_total,) = torch.autograd.grad(log_density(u).sum(), u)  # grad G / s0^2 - grad Q
    grad_q = grad_g / s0_sq - grad_total
    return float((0.5 * grad_g).norm(dim=1).mean()), float((0.5 * s0_sq * grad_q).norm(dim=1).mean())


def long_run(prior, backbone, seed: int, steps: int, every: int, step_scale: float) -> dict:
    generator = torch.Generator().manual_seed(seed + 17)
    u_top = torch.randn((GRID, backbone.model.latent_dim), generator=generator)
    chain = prior.trajectory(u_top, generator)
    s0_sq = float(prior.step_sizes_sq[0])
    step = chain.step * step_scale
    dims = backbone.model.group_dims
    rows, u, done = [], chain.u_end, 0
    while True:
        with torch.no_grad():
            g = float(chain.profile_energy(u).mean())
            z = backbone.model.u_to_z(u)
        drift_g, drift_q = drift_norms(prior, chain.log_density, u, s0_sq)
        rows.append({"step": done, "neg_energy": g, "u_norm": float(u.norm(dim=1).mean()), "z_max_abs": float(z.abs().max()),
                     "group_u_norms": [float(p.norm(dim=1).mean()) for p in torch.split(u, list(dims), dim=1)],
                     "drift_energy": drift_g, "drift_restoring": drift_q})
        if done >= steps or not np.isfinite(g) or not torch.isfinite(z).all():
            break
        u, _ = langevin(chain.log_density, u, every, step, generator)
        done += every
        if not torch.isfinite(u).all():
            rows.append({"step": done, "neg_energy": float("nan")})
            break
    return {"step_scale": step_scale, "step": step, "s0_sq": s0_sq, "profile": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, required=True)
    parser.add_argument("--prior", default="diffusion")
    parser.add_argument("--steps", type=int, default=2500)
    parser.add_argument("--every", type=int, default=25)
    parser.add_argument("--step-scale", type=float, nargs="+", default=[1.0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--name", default="diffusion_long_run")
    args = parser.parse_args()
    torch.set_num_threads(1)
    backbone = load_backbone(args.run / "backbone", torch.device("cpu"))
    prior, _ = open_prior(args.run / "priors" / args.prior, backbone, torch.device("cpu"), SamplingOptions())
    runs = [long_run(prior, backbone, args.seed, args.steps, args.every, scale) for scale in args.step_scale]
    emit(args.name, {"run": str(args.run), "prior": args.prior, "data_energies": data_energies(prior, backbone), "runs": runs,
                     "machine": machine()})


if __name__ == "__main__":
    main()
