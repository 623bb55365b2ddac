"""The data-consistency step size of `sample --inpaint` (docs/decisions.md "Latent inpainting"): Langevin on
log p(x_visible | T(u)) - |u|^2/2 (Gaussian prior) over the free latents, on Fashion-MNIST test images with the centre
mask, for several step sizes s. Reports the chain's log density (start, end) and the raw decode's MSE on the visible
pixels ([-1, 1] scale) after K steps.

- vlae-small (every latent free): K = 200 from u_q (the latents inferred from the masked image) and from a prior draw;
- nvae (footprint mask): K = 50 from the replacement draw (free latents ~ N(0, I), the rest u_q).

    cd benchmarks && OMP_NUM_THREADS=1 PYTHONPATH=.. python inpainting_step_size.py --n 8
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from _common import REPO, SHARED_DATA, emit

from hebmctl.data import load_split, to_unit_range
from hebmctl.data.inpaint_inputs import NAMED_MASKS
from hebmctl.priors.inpainting import free_latent_mask, infer_latents, visible_log_density
from hebmctl.samplers import langevin
from hebmctl.samplers.conditional import compose, masked_log_density
from hebmctl.stages.artifacts import load_backbone

CASES = {"vlae": (REPO / "runs/fashion-vlae-small/backbone", 200, (0.1, 0.03, 0.01)),
         "nvae": (REPO / "runs/fashion-nvae/backbone", 50, (0.1, 0.03, 0.01, 0.003))}


def run_case(name: str, x: torch.Tensor, pixel_mask: torch.Tensor) -> list[dict]:
    folder, steps, step_sizes = CASES[name]
    model = load_backbone(folder, torch.device("cpu")).model
    u_q = infer_latents(model, x, pixel_mask)
    free = free_latent_mask(model, pixel_mask, None)
    generator = torch.Generator().manual_seed(0)
    starts = {"u_q": u_q, "prior draw": compose(u_q, torch.randn(u_q.shape, generator=generator), free)}
    visible = 1 - pixel_mask
    rows = []
    for start_name, start in starts.items():
        for s in step_sizes:
            log_p = masked_log_density(visible_log_density(model, None, x, pixel_mask), start, free)
            v, stats = langevin(log_p, start, steps, s, torch.Generator().manual_seed(1))
            with torch.no_grad():
                x_raw = model.decode(model.u_to_z(compose(start, v, free)))
                log_end = float(log_p(v).mean())
            rows.append({"backbone": name, "start": start_name, "steps": steps, "step_size": s,
                         "log_density_start": round(float(stats.log_density[0]), 1), "log_density_end": round(log_end, 1),
                         "visible_mse": round(float(((x_raw - x) ** 2 * visible).sum() / (visible.sum() * x.shape[0])), 4)})
            print(rows[-1], flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=8)
    args = parser.parse_args()
    torch.set_num_threads(1)
    images = load_split(f"fashion-mnist:{SHARED_DATA / 'fashion-mnist'}", "test", limit=args.n).images
    x = to_unit_range(images)
    pixel_mask = torch.from_numpy(NAMED_MASKS["center"](*images.shape[1:3]).astype(np.float32))
    rows = [row for name in CASES for row in run_case(name, x, pixel_mask)]
    emit("inpainting_step_size", {"n_images": args.n, "mask": "center", "prior": "gaussian", "rows": rows})


if __name__ == "__main__":
    main()
