"""How well does latent inpainting (`sample --inpaint`) fill a masked region? Fashion-MNIST test images, a centre and a
bottom-half mask; MSE on the masked region against the ground truth ([-1, 1] scale) for:

- `recon`: the reconstruction of the masked image (the decode of the latents inferred from the visible pixels, visible
  pixels pasted back): the baseline, no prior sampling;
- `gaussian` / EBM prior (`diffusion` on nvae, `joint` on vlae) with the replacement method (nvae: footprint mask, all
  layers or only the 14x14 layers z1, z2, latents fixed in u or in z; vlae: `--inpaint-layers 1`) and with data
  consistency (`--inpaint-guidance-steps K`; on vlae every latent free, or layer 1 only).

Also: best-of-S MSE (the draw closest to the truth), diversity (mean squared difference between two draws on the masked
region) and the raw decode's MSE on the visible pixels (how well the kept latents hold the visible region).
MSE rewards the blurry conditional mean: the recon baseline is such a mean, single prior draws are not.

Needs the artifacts of docs/results.md "Latent inpainting" under runs/ (copies of /work/main/runs/fashion-nvae and a
joint prior on runs/fashion-vlae-small). Writes grids under runs/bench-inpaint/ and benchmarks/results/inpainting.json.

    cd benchmarks && OMP_NUM_THREADS=1 PYTHONPATH=.. python inpainting.py --n 64 --draws 3
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import numpy as np
import torch
from _common import REPO, RESULTS, SHARED_DATA, emit

from hebmctl.data import load_split, to_unit_range
from hebmctl.data.inpaint_inputs import NAMED_MASKS
from hebmctl.io.images import save_grid
from hebmctl.priors.inpainting import infer_latents, paste_visible
from hebmctl.schemas import SampleConfig
from hebmctl.stages import sample
from hebmctl.stages.artifacts import load_backbone

RUNS = REPO / "runs"
BACKBONES = {
    "nvae": (RUNS / "fashion-nvae", "diffusion", [("replace", {}), ("replace-z1z2", {"inpaint_layers": (1, 2)}),
                                                  ("replace-fixz", {"inpaint_fix": "z"}), ("replace+dc50", {"inpaint_guidance_steps": 50}),
                                                  ("replace-fixz+dc50", {"inpaint_fix": "z", "inpaint_guidance_steps": 50})]),
    "vlae": (RUNS / "fashion-vlae-small", "joint", [("layer1", {"inpaint_layers": (1,)}), ("dc100", {"inpaint_guidance_steps": 100}),
                                                    ("layer1+dc100", {"inpaint_layers": (1,), "inpaint_guidance_steps": 100})]),
}
MASKS = ("center", "bottom-half")


def region_mse(a: np.ndarray, b: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Per-image MSE on the masked pixels, [-1, 1] scale: uint8 `[..., H, W, C]` pairs -> `[...]`."""
    diff = (a.astype(np.float64) - b.astype(np.float64)) / 127.5
    return (diff[..., mask, :] ** 2).mean(axis=(-1, -2))


def visible_mse(raw: np.ndarray, original: np.ndarray, mask: np.ndarray) -> float:
    return float(region_mse(raw, original[:, None], ~mask).mean())


def recon_images(run: Path, images: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """Decode of the latents inferred from the visible pixels (posterior mean): (visible pixels pasted back, raw decode),
    uint8 `[N, H, W, C]`, and the seconds taken."""
    model = load_backbone(run / "backbone", torch.device("cpu")).model
    x = to_unit_range(images)
    pixel_mask = torch.from_numpy(mask.astype(np.float32))
    t0 = time.perf_counter()
    with torch.no_grad():
        x_raw = model.decode(model.u_to_z(infer_latents(model, x, pixel_mask))).clamp(-1, 1)
    wall = time.perf_counter() - t0
    filled = ((paste_visible(x_raw, x, pixel_mask) + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
    raw = ((x_raw + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
    return filled, raw, wall


def recon_baseline(run: Path, images: np.ndarray, mask: np.ndarray, out: Path) -> dict:
    """The baseline's metrics and grid (rows: masked input, reconstruction with visible pixels pasted, original)."""
    out.mkdir(parents=True)
    filled, raw, wall = recon_images(run, images, mask)
    masked = images.copy()
    masked[:, mask] = 128
    save_grid(out / "grid.png", np.concatenate([masked[:16], filled[:16], images[:16]]), 16)
    per_image = region_mse(filled, images, mask)
    return {"masked_mse": float(per_image.mean()), "masked_mse_se": float(per_image.std(ddof=1) / np.sqrt(len(per_image))),
            "raw_visible_mse": visible_mse(raw[:, None], images, mask), "wall_s_per_image": round(wall / len(images), 4)}


def paired(bench: Path, images: np.ndarray) -> list[dict]:
    """Per-image differences of masked-region MSE (mean over draws), same images: each EBM-prior variant minus the same
    variant with the Gaussian prior, and each variant minus the recon baseline; mean and standard error over images."""
    out = []
    for family, (run, ebm, variants) in BACKBONES.items():
        for mask_name in MASKS:
            folder = bench / family / mask_name
            if not folder.is_dir():
                continue
            mask = NAMED_MASKS[mask_name](*images.shape[1:3])
            recon = region_mse(recon_images(run, images, mask)[0], images, mask)
            for method, _ in variants:
                mse = {p: region_mse(*_pair(folder / f"{p}-{method}"), mask).mean(1) for p in ("gaussian", ebm)}
                for name, diff in ((f"{ebm} - gaussian", mse[ebm] - mse["gaussian"]), ("gaussian - recon", mse["gaussian"] - recon),
                                   (f"{ebm} - recon", mse[ebm] - recon)):
                    out.append({"backbone": family, "mask": mask_name, "method": method, "difference": name,
                                "mean": round(float(diff.mean()), 4), "se": round(float(diff.std(ddof=1) / np.sqrt(len(diff))), 4)})
    return out


def _pair(folder: Path) -> tuple[np.ndarray, np.ndarray]:
    arrays = np.load(folder / "images.npz")
    return arrays["inpainted"], arrays["original"][:, None]


def prior_variant(run: Path, prior: str, settings: dict, data: Path, mask_name: str, out: Path, draws: int) -> dict:
    """One `sample --inpaint` run through the stage; metrics from its images.npz."""
    prior_arg = prior if prior == "gaussian" else str(run / "priors" / prior)
    config = SampleConfig(backbone=run / "backbone", prior=prior_arg, out=out, inpaint=data, mask=mask_name, inpaint_draws=draws,
                          device="cpu", batch_size=64, **settings)
    t0 = time.perf_counter()
    manifest = sample.run(config, sample.RunControl(force=True))
    wall = time.perf_counter() - t0
    arrays = np.load(out / "images.npz")
    mask, original, inpainted = arrays["mask"].astype(bool), arrays["original"], arrays["inpainted"]
    per_draw = region_mse(inpainted, original[:, None], mask)  # [N, S]
    return {"masked_mse": float(per_draw.mean()), "masked_mse_se": float(per_draw.mean(1).std(ddof=1) / np.sqrt(len(per_draw))),
            "best_of_draws_mse": float(per_draw.min(1).mean()),
            "diversity": float(region_mse(inpainted[:, 0], inpainted[:, 1], mask).mean()) if draws > 1 else None,
            "raw_visible_mse": visible_mse(arrays["raw"], original, mask), "wall_s_per_image": round(wall / len(original) / draws, 4),
            "free_latent_fraction_per_layer": [round(f, 3) for f in manifest.sampler["inpaint"]["free_latent_fraction_per_layer"]]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=64, help="test images (a seeded stratified subset)")
    parser.add_argument("--draws", type=int, default=3, help="inpaintings per image")
    parser.add_argument("--families", default="nvae,vlae")
    parser.add_argument("--analyse-only", action="store_true", help="only add the paired differences, from the folders a full run left")
    args = parser.parse_args()
    torch.set_num_threads(1)
    bench = RUNS / "bench-inpaint"
    images = load_split(f"fashion-mnist:{SHARED_DATA / 'fashion-mnist'}", "test", limit=args.n).images
    if args.analyse_only:
        result = json.loads((RESULTS / "inpainting.json").read_text())
        result.pop("benchmark"), result.pop("machine")
        emit("inpainting", result | {"paired": paired(bench, images)})
        return
    shutil.rmtree(bench, ignore_errors=True)
    bench.mkdir(parents=True)
    data = bench / "fashion-test.npz"
    np.savez(data, images=images)
    rows = []
    for family in args.families.split(","):
        run, ebm, variants = BACKBONES[family]
        for mask_name in MASKS:
            mask = NAMED_MASKS[mask_name](*images.shape[1:3])
            out = bench / family / mask_name
            out.mkdir(parents=True)
            rows.append({"backbone": family, "mask": mask_name, "prior": "none", "method": "recon"} | recon_baseline(run, images, mask,
                                                                                                                    out / "recon"))
            for prior in ("gaussian", ebm):
                for method, settings in variants:
                    result = prior_variant(run, prior, settings, data, mask_name, out / f"{prior}-{method}", args.draws)
                    rows.append({"backbone": family, "mask": mask_name, "prior": prior, "method": method} | result)
                    print(rows[-1], flush=True)
    emit("inpainting", {"n_images": args.n, "draws": args.draws, "data": "fashion-mnist test, stratified subset (seed of load_split)",
                        "grids": str(bench.relative_to(REPO)), "rows": rows, "paired": paired(bench, images)})


if __name__ == "__main__":
    main()
