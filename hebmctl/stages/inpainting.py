"""`sample --inpaint IMAGE --mask MASK`: the sample stage's inpainting outputs (not a stage of its own).

`prepare` reads and checks every input before any compute; `write` runs `hebmctl.priors.inpainting` per draw and
batch and writes, besides the manifest the sample stage writes:
- `grid.png`: one column per image (at most MAX_GRID_IMAGES), rows = the masked input (masked pixels grey), one
  inpainting per draw (visible pixels pasted back), the original; `grid_raw.png`: the same with the raw decodes;
- `images.npz`: uint8 `images [N * S, H, W, C]` (the pasted inpaintings, image-major), `inpainted` and `raw`
  `[N, S, H, W, C]`, `original [N, H, W, C]`, `mask [H, W]` (1 = filled);
- `latents.safetensors`: `u_inferred [N, D]`, `u [N, S, D]` (the final latents), `latent_mask [D]` (1 = redrawn).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from hebmctl import priors
from hebmctl.data import from_unit_range
from hebmctl.data.inpaint_inputs import InpaintInputs, read_inpaint_inputs
from hebmctl.data.transforms import to_unit_range
from hebmctl.errors import ConfigError
from hebmctl.io.atomic import write_with
from hebmctl.io.images import save_grid
from hebmctl.io.state import save_tensors
from hebmctl.models.backbone import Backbone
from hebmctl.priors.inpainting import (
    DEFAULT_DRAWS,
    DEFAULT_GUIDANCE_STEP_SIZE,
    DEFAULT_GUIDANCE_STEPS,
    InpaintSettings,
    free_latent_mask,
    infer_latents,
    inpaint,
)
from hebmctl.schemas.common import InputRef
from hebmctl.schemas.sample import SampleConfig

MAX_GRID_IMAGES, MASK_GREY = 16, 128


@dataclass(frozen=True)
class InpaintJob:
    """The checked inputs: images, pixel mask `[H, W]` (1 = fill), latent mask `[D]` (1 = redrawn), settings, draws."""

    inputs: InpaintInputs
    pixel_mask: Tensor
    latent_mask: Tensor
    settings: InpaintSettings
    draws: int

    def input_refs(self, config: SampleConfig) -> list[InputRef]:
        """The images and the mask as inputs of the samples artifact (content hashes, so they enter the fingerprint)."""
        mask_kind = "named-mask" if self.inputs.mask_name else "file"
        return [InputRef(role="inpaint:image", path=str(config.inpaint), kind="file", sha256=self.inputs.image_sha256),
                InputRef(role="inpaint:mask", path=str(config.mask), kind=mask_kind, sha256=self.inputs.mask_sha256)]


def prepare(config: SampleConfig, backbone: Backbone) -> InpaintJob | None:
    """The checked inpainting job of `config` (None without --inpaint); ConfigError / DataError before any compute."""
    if config.inpaint is None:
        return None
    inputs = read_inpaint_inputs(config.inpaint, config.mask, backbone.image_shape)
    layers = _layers(config.inpaint_layers, backbone.num_layers)
    settings = InpaintSettings(layers, config.inpaint_fix == "z", _or(config.inpaint_guidance_steps, DEFAULT_GUIDANCE_STEPS),
                               _or(config.inpaint_step_size, DEFAULT_GUIDANCE_STEP_SIZE), config.temperature)
    pixel_mask = torch.from_numpy(inputs.mask.astype(np.float32))
    latent_mask = free_latent_mask(backbone, pixel_mask, layers).cpu()
    if bool(latent_mask.all()) and settings.guidance_steps == 0:
        raise ConfigError(
            f"--mask {config.mask}: every latent of the chosen layers touches the masked pixels (a vector latent group covers the "
            "whole image), so replacement would keep nothing of the visible image and draw unconditional samples. Choose "
            "--inpaint-layers (the layers to redraw; the others keep the values inferred from the visible pixels) or "
            "--inpaint-guidance-steps K (data consistency: Langevin on the visible pixels' likelihood), or both.")
    return InpaintJob(inputs, pixel_mask, latent_mask, settings, _or(config.inpaint_draws, DEFAULT_DRAWS))


def _or(value, default):
    return default if value is None else value


def _layers(layers: tuple[int, ...] | None, num_layers: int) -> tuple[int, ...] | None:
    """1-based --inpaint-layers -> sorted 0-based layers; ConfigError past the top layer."""
    if layers is None:
        return None
    if max(layers) > num_layers:
        raise ConfigError(f"--inpaint-layers {max(layers)}: the backbone has {num_layers} latent layers (z1 = bottom ... "
                          f"z{num_layers} = top).")
    return tuple(sorted({layer - 1 for layer in layers}))


def draw_generator(seed: int, draw: int, start: int, device: torch.device) -> torch.Generator:
    """The generator of draw `draw` for the batch of images that starts at `start`: each draw is its own seed."""
    return torch.Generator(device=device).manual_seed(seed * 1_000_003 + draw * 7_919 + start)


def write(out: Path, config: SampleConfig, prior: priors.Prior, job: InpaintJob) -> tuple[list[str], dict, dict]:
    """Inpaint every image `job.draws` times and write the files of the module docstring.
    Returns the file names, the metrics and the sampler's inpainting settings (for the manifest)."""
    t0 = time.perf_counter()
    x_all = to_unit_range(job.inputs.images)  # [N, C, H, W]
    u_q, u, raw, pasted = _run(config, prior, job, x_all)
    wall_s = time.perf_counter() - t0
    _write_files(out, job, x_all, u_q, u, raw, pasted)
    metrics = _metrics(job, x_all, raw, pasted) | {"wall_s": round(wall_s, 3),
                                                   "images_per_s": round(pasted.shape[0] * pasted.shape[1] / max(wall_s, 1e-9), 2)}
    return ["grid.png", "grid_raw.png", "images.npz", "latents.safetensors"], metrics, _describe(job, prior.backbone)


def _run(config: SampleConfig, prior: priors.Prior, job: InpaintJob, x_all: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """u_q `[N, D]`, u `[N, S, D]`, raw and pasted decodes `[N, S, C, H, W]` (CPU)."""
    device, n = prior.device, x_all.shape[0]
    pixel_mask, latent_mask = job.pixel_mask.to(device), job.latent_mask.to(device)
    u_q_parts, u_parts, raw_parts, pasted_parts = [], [], [], []
    for start in range(0, n, config.batch_size):
        x = x_all[start : start + config.batch_size].to(device)
        u_q = infer_latents(prior.backbone, x, pixel_mask)
        draws = [inpaint(prior, x, pixel_mask, u_q, latent_mask, job.settings, draw_generator(config.seed, s, start, device))
                 for s in range(job.draws)]
        u_q_parts.append(u_q.cpu())
        u_parts.append(torch.stack([d.u for d in draws], 1).cpu())
        raw_parts.append(torch.stack([d.x_raw for d in draws], 1).cpu())
        pasted_parts.append(torch.stack([d.x_out for d in draws], 1).cpu())
    return torch.cat(u_q_parts), torch.cat(u_parts), torch.cat(raw_parts), torch.cat(pasted_parts)


def _uint8(x: Tensor) -> np.ndarray:
    """`[N, S, C, H, W]` in [-1, 1] -> uint8 `[N, S, H, W, C]`."""
    n, s = x.shape[:2]
    return from_unit_range(x.flatten(0, 1)).reshape(n, s, *from_unit_range(x[:1, 0]).shape[1:])


def _write_files(out: Path, job: InpaintJob, x_all: Tensor, u_q: Tensor, u: Tensor, raw: Tensor, pasted: Tensor) -> None:
    original = job.inputs.images
    masked = original.copy()
    masked[:, job.inputs.mask] = MASK_GREY
    inpainted, raw_images = _uint8(pasted), _uint8(raw)
    for name, rows in (("grid.png", inpainted), ("grid_raw.png", raw_images)):
        save_grid(out / name, _grid_rows(masked, rows, original), min(len(original), MAX_GRID_IMAGES))
    arrays = {"images": inpainted.reshape(-1, *original.shape[1:]), "inpainted": inpainted, "raw": raw_images, "original": original,
              "mask": job.inputs.mask.astype(np.uint8)}
    write_with(out / "images.npz", lambda tmp: np.savez(open(tmp, "wb"), **arrays))
    save_tensors(out / "latents.safetensors", {"u_inferred": u_q, "u": u, "latent_mask": job.latent_mask})


def _grid_rows(masked: np.ndarray, draws: np.ndarray, original: np.ndarray) -> np.ndarray:
    """Rows for the grid: masked inputs `[n, H, W, C]`, each draw `draws[:, s]`, originals (first MAX_GRID_IMAGES images)."""
    k = min(len(original), MAX_GRID_IMAGES)
    rows = [masked[:k], *(draws[:k, s] for s in range(draws.shape[1])), original[:k]]
    return np.concatenate(rows)


def _metrics(job: InpaintJob, x_all: Tensor, raw: Tensor, pasted: Tensor) -> dict:
    """Mean squared errors on the [-1, 1] scale against the given images: on the masked pixels (the input's own pixels
    there are the reference when it has them) and of the raw decode on the visible pixels (how well the kept latents
    hold the visible region), averaged over images and draws."""
    m = job.pixel_mask[None, None, None]  # [1, 1, 1, H, W]
    sq = (pasted - x_all[:, None]) ** 2
    raw_sq = (raw - x_all[:, None]) ** 2
    channels = x_all.shape[1]
    return {"masked_mse_vs_input": float((sq * m).sum() / (m.sum() * channels * sq.shape[0] * sq.shape[1])),
            "raw_visible_mse": float((raw_sq * (1 - m)).sum() / ((1 - m).sum() * channels * sq.shape[0] * sq.shape[1])),
            "n_images": int(x_all.shape[0]), "draws": int(pasted.shape[1])}


def _describe(job: InpaintJob, backbone: Backbone) -> dict:
    """The inpainting settings for the manifest's `sampler`."""
    per_layer = [float(part.mean()) for part in backbone.split_groups(job.latent_mask)]
    settings = job.settings
    return {"inpaint": {"method": "latent replacement (resample_masked) + optional data-consistency Langevin",
                        "mask": job.inputs.mask_name or "png", "mask_fraction": float(job.inputs.mask.mean()),
                        "image_sha256": job.inputs.image_sha256, "mask_sha256": job.inputs.mask_sha256,
                        "free_latent_fraction_per_layer": per_layer, "layers": None if settings.layers is None else [k + 1 for k in settings.layers],
                        "fixed_in": "z" if settings.fix_in_z else "u", "draws": job.draws, "guidance_steps": settings.guidance_steps, "guidance_step_size": settings.guidance_step_size,
                        "encoder_fill": "mean of the visible pixels", "temperature_on": "free latents"}}
