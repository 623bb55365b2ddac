"""Which level of a diffusion EBM prior separates in- from out-of-distribution codes? (issue 5 analysis)

    python benchmarks/diffusion_level_scores.py --run RUN --ood SPEC [--prior diffusion] [--draws 4] [--name NAME]

`eval ood` / `eval anomaly` score a diffusion prior with its level-0 term, F(z) = G(T(u), 0) / s_0^2
(DESIGN §3). That level is trained with noise s_0 ~ 0.01, so it sees only a thin shell around the
training codes. This script scores the posterior codes u ~ q(u | x) of the backbone's test split
(in) and of --ood's test split (out) with each level's marginal log-density instead (DESIGN §3's
conditional at level t without the recovery kernel, up to a constant):

    log p_t(u_t) = G(T(u_t), t) / s_t^2 - |u_t|^2 / 2,   u_t = alpha_cum[t] u + sigma_cum[t] eps,

averaged over --draws noise draws (the same eps for every image), and reports the AUROC of -log p_t
with the out-of-distribution images positive. Rows: 'gaussian' (-|u|^2/2 alone, the backbone's
prior in u-space) and 'level t' for t = 0 .. T-1. Writes benchmarks/results/<name>.json.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from _common import emit

from hebmctl.data import load_split, to_unit_range
from hebmctl.metrics.detection import detection_metrics
from hebmctl.stages.artifacts import load_backbone, load_prior


@torch.no_grad()
def posterior_u(model, images: np.ndarray, seed: int, batch: int = 500) -> torch.Tensor:
    """One posterior draw u ~ q(u | x) per image: uint8 [N, H, W, C] -> [N, D]."""
    generator = torch.Generator().manual_seed(seed)
    parts = []
    for start in range(0, len(images), batch):
        z, _ = model.posterior(to_unit_range(images[start : start + batch]), generator, sample=True)
        parts.append(model.z_to_u(z))
    return torch.cat(parts)


@torch.no_grad()
def level_log_density(model, energy, u: torch.Tensor, level: int, alpha_cum: float, sigma_cum: float, s_sq: float,
                      draws: int, seed: int) -> np.ndarray:
    """Mean over draws of log p_t(u_t) (module docstring) for codes u [N, D] -> [N]."""
    generator = torch.Generator().manual_seed(seed)
    noise = torch.randn((draws, u.shape[1]), generator=generator)
    total = torch.zeros(u.shape[0])
    for eps in noise:
        u_t = alpha_cum * u + sigma_cum * eps
        t = torch.full((u.shape[0],), level, dtype=torch.long)
        total += energy(model.u_to_z(u_t), t) / s_sq - 0.5 * (u_t**2).sum(dim=1)
    return (total / draws).numpy()


def auroc(score_in: np.ndarray, score_out: np.ndarray) -> float:
    """AUROC of an outlier score (higher = more out), out-of-distribution positive (as `eval ood`)."""
    return round(detection_metrics(score_in, score_out)["auroc"], 4)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, required=True)
    parser.add_argument("--ood", required=True, help="Data spec of the out-of-distribution set (its test split is used).")
    parser.add_argument("--prior", default="diffusion", help="Diffusion prior name under RUN/priors/.")
    parser.add_argument("--draws", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--name", default=None)
    args = parser.parse_args()
    backbone = load_backbone(args.run / "backbone", torch.device("cpu"))
    prior = load_prior(args.run / "priors" / args.prior, backbone, torch.device("cpu"))
    if prior.manifest.config.scheme != "diffusion":
        raise SystemExit(f"{args.prior} is a {prior.manifest.config.scheme} prior; this script reads diffusion levels.")
    model, schedule = backbone.model, prior.manifest.schedule
    u_in = posterior_u(model, load_split(backbone.manifest.config.data, "test").images, args.seed)
    u_out = posterior_u(model, load_split(args.ood, "test").images, args.seed + 1)
    rows = {"gaussian": auroc(0.5 * (u_in**2).sum(1).numpy(), 0.5 * (u_out**2).sum(1).numpy())}
    for level, step in enumerate(prior.manifest.step_sizes):
        per_set = [level_log_density(model, prior.energy, u, level, schedule["alpha_cum"][level], schedule["sigma_cum"][level],
                                     step**2, args.draws, args.seed) for u in (u_in, u_out)]
        rows[f"level {level}"] = auroc(-per_set[0], -per_set[1])
    emit(args.name or f"diffusion_level_scores_{args.run.name}",
         {"run": str(args.run), "prior": args.prior, "ood": args.ood, "draws": args.draws, "n_in": len(u_in), "n_out": len(u_out),
          "auroc_out_positive": rows})


if __name__ == "__main__":
    main()
