"""Stage `sample`: images from the backbone with the Gaussian prior or a trained EBM prior (issue 3).

u_0 comes from N(0, I) (gaussian), K Langevin steps from N(0, I) (joint), or reverse diffusion
u_T ~ N(0, I) -> u_0 (diffusion); then z = T(tau * u_0) and x = decoder mean(z) (DESIGN §3).
Writes `grid.png`, `images/NNNNNN.png`, `images.npz` (uint8 `images [N, H, W, C]`),
`latents.safetensors` (`u0`, `z`), `chains.json` (per-step chain statistics), optional
hierarchical and trajectory figures, then the manifest.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from hebmctl.data import from_unit_range
from hebmctl.errors import ConfigError, DivergenceError
from hebmctl.io.atomic import write_text, write_with
from hebmctl.io.console import console, progress_bar
from hebmctl.io.images import save_grid, save_png
from hebmctl.io.manifest import common_fields, describe_file, prepare_output, stage_fingerprint, write_manifest
from hebmctl.io.output import writes_artifact
from hebmctl.io.plots import save_line_plot
from hebmctl.io.state import save_tensors
from hebmctl.runtime import peak_rss_mb, resolve_device
from hebmctl.samplers import conditional_log_density, langevin, reverse_diffusion_sample, sample_joint_prior
from hebmctl.samplers.conditional import resample_masked_diffusion, resample_masked_joint
from hebmctl.samplers.langevin import ChainStats, joint_prior_log_density
from hebmctl.schemas.common import InputRef
from hebmctl.schemas.sample import SampleConfig, SamplesManifest
from hebmctl.stages.artifacts import LoadedBackbone, LoadedPrior, load_backbone, load_prior
from hebmctl.stages.train_prior import PriorGeometry, neg_energy_on_u, prior_geometry

GRID_COLUMNS = 8


@dataclass(frozen=True)
class RunControl:
    force: bool = False


@dataclass(frozen=True)
class Sampler:
    """A prior's sampler with every number resolved: draws u_0 `[n, D]` from a generator."""

    backbone: LoadedBackbone
    prior: LoadedPrior | None
    n_steps: int
    step_size: float  # joint: s; diffusion: the scale applied to every s_t
    device: torch.device
    geometry: PriorGeometry | None = None  # schedule and training step sizes of a prior

    @property
    def kind(self) -> str:
        return "gaussian" if self.prior is None else self.prior.manifest.config.scheme

    def draw(self, n: int, generator: torch.Generator) -> tuple[Tensor, list[ChainStats]]:
        """u_0 `[n, D]` and the chain statistics (one per diffusion level, or one for joint)."""
        u_top = torch.randn((n, self.backbone.model.latent_dim), generator=generator, device=self.device)
        if self.prior is None:
            return u_top, []
        G = neg_energy_on_u(self.prior.energy, self.backbone)
        if self.kind == "joint":
            u0, stats = sample_joint_prior(lambda u: G(u, None), u_top, self.n_steps, self.step_size, generator)
            return u0, [stats]
        geometry = self.geometry
        return reverse_diffusion_sample(G, u_top, geometry.schedule, geometry.step_sizes_sq, self.n_steps, generator, step_scale=self.step_size)

    def describe(self, temperature: float, seed: int) -> dict:
        info: dict = {"kind": self.kind, "temperature": temperature, "seed": seed, "langevin_steps": self.n_steps}
        if self.prior is not None:
            cfg = self.prior.manifest.config
            info["training_langevin_steps"] = cfg.langevin_steps
            if self.kind == "joint":
                info["step_size"] = self.step_size
            else:
                info |= {"step_scale": self.step_size, "schedule": self.prior.manifest.schedule,
                         "step_sizes": [s * self.step_size for s in self.prior.manifest.step_sizes]}
        return info


def make_sampler(config: SampleConfig, backbone: LoadedBackbone, prior: LoadedPrior | None, device: torch.device) -> Sampler:
    """Resolve K and the step size: the prior's training values unless overridden.

    Diffusion with K != K_train: every s_t is scaled by sqrt(K_train / K) (CDRL's fewer-steps
    adjustment) unless --step-scale is given.
    """
    if prior is None:
        return Sampler(backbone, None, 0, 0.0, device)
    cfg = prior.manifest.config
    geometry = prior_geometry(cfg, device)
    k = config.langevin_steps if config.langevin_steps is not None else cfg.langevin_steps
    if cfg.scheme == "joint":
        return Sampler(backbone, prior, k, config.step_size or cfg.step_size, device, geometry)
    scale = config.step_scale if config.step_scale is not None else math.sqrt(cfg.langevin_steps / max(k, 1))
    return Sampler(backbone, prior, k, scale, device, geometry)


@writes_artifact
def run(config: SampleConfig, control: RunControl = RunControl()) -> SamplesManifest:
    device = resolve_device(config.device)
    backbone = load_backbone(config.backbone, device)
    prior_dir = config.prior_dir()
    prior = load_prior(prior_dir, backbone, device) if prior_dir is not None else None
    inputs = [InputRef(role="backbone", path=str(config.backbone), kind="backbone", sha256=backbone.manifest_sha256)]
    if prior is not None:
        inputs.append(InputRef(role="prior", path=str(prior_dir), kind="prior", sha256=prior.manifest_sha256))
    fingerprint = stage_fingerprint(config, inputs)
    existing = prepare_output(config.out, SamplesManifest, fingerprint, control.force)
    if existing is not None:
        console().print(f"[green]sample: {config.out} is up to date[/green]")
        return existing
    sampler = make_sampler(config, backbone, prior, device)
    out = config.out
    out.mkdir(parents=True, exist_ok=True)
    u0, z, images, chain_stats, wall_s = generate(config, sampler)
    names = _write_samples(out, u0, z, images, chain_stats)
    if config.hierarchical:
        names += _write_hierarchical(out, config, sampler, u0[:GRID_COLUMNS])
    long_run: dict = {}
    if config.trajectory:
        trajectory_names, long_run = _write_trajectory(out, config, sampler)
        names += trajectory_names
    metrics = long_run | {"wall_s": round(wall_s, 3), "images_per_s": round(config.n / max(wall_s, 1e-9), 2),
               "pixel_saturation": float(np.mean((images == 0) | (images == 255))), "peak_rss_mb": round(peak_rss_mb(), 1), "device": str(device)}
    manifest = SamplesManifest(**common_fields(fingerprint), config=config, inputs=inputs, outputs=[describe_file(out, n) for n in names],
                               metrics=metrics, prior_kind=sampler.kind, sampler=sampler.describe(config.temperature, config.seed))
    write_manifest(out, manifest)
    console().print(f"[green]sample: done[/green] {config.n} images from the {sampler.kind} prior in {wall_s:.1f} s -> {out}")
    return manifest


def generate(config: SampleConfig, sampler: Sampler) -> tuple[Tensor, Tensor, np.ndarray, list[list[ChainStats]], float]:
    """Batched sampling; batch b uses a generator seeded by (seed, b). Returns u0, z `[n, D]`, uint8 images."""
    model = sampler.backbone.model
    u_parts, z_parts, image_parts, stats = [], [], [], []
    t0 = time.perf_counter()
    with progress_bar() as bar:
        task = bar.add_task(f"sample {sampler.kind}", total=config.n, unit="img", info="")
        for start in range(0, config.n, config.batch_size):
            n = min(config.batch_size, config.n - start)
            generator = torch.Generator(device=sampler.device).manual_seed(config.seed * 1_000_003 + start)
            u0, chain = sampler.draw(n, generator)
            _require_finite(u0, sampler)
            with torch.no_grad():
                z = model.u_to_z(config.temperature * u0)  # DESIGN §3: z = T(tau * u_0)
                x = model.decode(z).clamp(-1, 1)
            _require_finite_images(z, x, config.temperature)
            u_parts.append(u0.cpu()), z_parts.append(z.cpu()), image_parts.append(from_unit_range(x.cpu())), stats.append(chain)
            bar.update(task, advance=n)
    return torch.cat(u_parts), torch.cat(z_parts), np.concatenate(image_parts), stats, time.perf_counter() - t0


def _require_finite(u0: Tensor, sampler: Sampler) -> None:
    bad = int((~torch.isfinite(u0).all(dim=1)).sum())
    if bad:
        raise DivergenceError(
            f"The {sampler.kind} sampler diverged: {bad} of {u0.shape[0]} latents in a batch are not finite "
            f"(K = {sampler.n_steps}, step {sampler.step_size:g}). Nothing was written as samples; use a smaller "
            "--step-size / --step-scale or fewer --langevin-steps."
        )


def _require_finite_images(z: Tensor, x: Tensor, temperature: float) -> None:
    if not (torch.isfinite(z).all() and torch.isfinite(x).all()):
        raise ConfigError(
            f"--temperature {temperature:g} makes the latents z = T(tau * u_0) or the images non-finite (float32 overflows). "
            "Use a temperature of about 0.5 to 1.5 (1 samples the prior itself). Nothing was written as samples."
        )


def _write_samples(out: Path, u0: Tensor, z: Tensor, images: np.ndarray, chain_stats: list[list[ChainStats]]) -> list[str]:
    save_grid(out / "grid.png", images[: GRID_COLUMNS * GRID_COLUMNS], GRID_COLUMNS)
    (out / "images").mkdir(exist_ok=True)
    for k, image in enumerate(images):
        save_png(out / "images" / f"{k:06d}.png", image)
    write_with(out / "images.npz", lambda tmp: np.savez(open(tmp, "wb"), images=images))
    save_tensors(out / "latents.safetensors", {"u0": u0, "z": z})
    first_batch = [s.to_dict() for s in chain_stats[0]] if chain_stats else []
    write_text(out / "chains.json", json.dumps({"first_batch_levels": first_batch}, indent=1))
    return ["grid.png", "images.npz", "latents.safetensors", "chains.json"]


@torch.no_grad()
def _decode(sampler: Sampler, u: Tensor, temperature: float) -> np.ndarray:
    model = sampler.backbone.model
    return from_unit_range(model.decode(model.u_to_z(temperature * u)).clamp(-1, 1).cpu())


def _write_hierarchical(out: Path, config: SampleConfig, sampler: Sampler, base_u: Tensor) -> list[str]:
    """hierarchical_zI.png: row r keeps sample r's other layers and redraws layer I in each column."""
    model, names = sampler.backbone.model, []
    n_base = base_u.shape[0]
    u_fixed = base_u.repeat_interleave(GRID_COLUMNS, dim=0)  # [n_base * 8, D]
    for layer in range(model.num_layers):
        mask = model.layer_mask({layer}, sampler.device)
        generator = torch.Generator(device=sampler.device).manual_seed(config.seed * 7919 + layer)
        u_new = resample_masked(sampler, u_fixed, mask, generator)
        images = _decode(sampler, u_new, config.temperature)
        name = f"hierarchical_z{layer + 1}.png"
        save_grid(out / name, images.reshape(n_base * GRID_COLUMNS, *images.shape[1:]), GRID_COLUMNS)
        names.append(name)
    return names


def resample_masked(sampler: Sampler, u_fixed: Tensor, mask: Tensor, generator: torch.Generator) -> Tensor:
    if sampler.prior is None:
        return u_fixed * (1 - mask) + torch.randn(u_fixed.shape, generator=generator, device=sampler.device) * mask
    G = neg_energy_on_u(sampler.prior.energy, sampler.backbone)
    if sampler.kind == "joint":
        return resample_masked_joint(lambda u: G(u, None), u_fixed, mask, sampler.n_steps, sampler.step_size, generator)[0]
    geometry = sampler.geometry
    return resample_masked_diffusion(G, u_fixed, mask, geometry.schedule, geometry.step_sizes_sq, sampler.n_steps, generator, sampler.step_size)[0]


def _write_trajectory(out: Path, config: SampleConfig, sampler: Sampler) -> tuple[list[str], dict]:
    """trajectory.png (images along the chain: one row per level / checkpoint of the chain),
    energy_profile.png and long_run.png (a long chain from the final samples: it must not saturate)."""
    if sampler.prior is None:
        return [], {}
    generator = torch.Generator(device=sampler.device).manual_seed(config.seed + 17)
    n, model = GRID_COLUMNS, sampler.backbone.model
    G = neg_energy_on_u(sampler.prior.energy, sampler.backbone)
    u_top = torch.randn((n, model.latent_dim), generator=generator, device=sampler.device)
    if sampler.kind == "diffusion":
        geometry = sampler.geometry
        u0, _, levels = reverse_diffusion_sample(G, u_top, geometry.schedule, geometry.step_sizes_sq, sampler.n_steps, generator,
                                                step_scale=sampler.step_size, return_trajectory=True)
        rows = levels  # u_T, ..., u_0
        log_density = _level0_log_density(G, levels[-2], geometry)
        step = float(geometry.step_sizes_sq[0].sqrt()) * sampler.step_size
    else:
        rows, u = [u_top], u_top
        chunk = max(1, sampler.n_steps // 4)
        for _ in range(4):
            u, _ = sample_joint_prior(lambda v: G(v, None), u, chunk, sampler.step_size, generator)
            rows.append(u)
        u0, log_density, step = u, joint_prior_log_density(lambda v: G(v, None)), sampler.step_size
    images = np.concatenate([_decode(sampler, r, config.temperature) for r in rows])
    save_grid(out / "trajectory.png", images, GRID_COLUMNS)
    u_long, profile = _long_run(G, log_density, u0, config.trajectory_steps, step, generator, sampler.kind == "diffusion")
    save_grid(out / "long_run.png", _decode(sampler, u_long, config.temperature), GRID_COLUMNS)
    diverged = profile["diverged_at_step"]
    title = f"{sampler.kind} prior: {config.trajectory_steps}-step run from the samples"
    if diverged is not None:
        title += f" (diverged: step {diverged})"
        console().print(f"[yellow]sample: the long run diverged (non-finite) at step {diverged}; the profile stops there.[/yellow]")
    save_line_plot(out / "energy_profile.png", {"F(T(u)) (batch mean)": profile["neg_energy"]}, title, "Langevin step",
                   "negative energy F", x=profile["step"])
    write_text(out / "energy_profile.json", json.dumps(profile))
    long_run = {"long_run_steps": config.trajectory_steps, "long_run_diverged_at_step": diverged,
                "long_run_neg_energy_start": profile["neg_energy"][0], "long_run_neg_energy_end": profile["neg_energy"][-1]}
    return ["trajectory.png", "long_run.png", "energy_profile.png", "energy_profile.json"], long_run


PROFILE_POINTS = 100


def _long_run(G, log_density, u0: Tensor, n_steps: int, step: float, generator: torch.Generator, with_level: bool) -> tuple[Tensor, dict]:
    """Langevin for n_steps from u0, recording the batch-mean F(T(u)) (at level 0 for the diffusion
    scheme) at ~PROFILE_POINTS evenly spaced steps.

    A chain that leaves the finite numbers is divergence, not an error: the run stops there, the
    last finite state is returned and `diverged_at_step` says when (None if it never did).
    """
    t0 = torch.zeros(u0.shape[0], dtype=torch.long, device=u0.device) if with_level else None
    chunk = max(1, n_steps // PROFILE_POINTS)
    u, done = u0, 0
    with torch.no_grad():
        profile: dict = {"step": [0], "neg_energy": [float(G(u, t0).mean())], "diverged_at_step": None}
    while done < n_steps:
        k = min(chunk, n_steps - done)
        u_next, _ = langevin(log_density, u, k, step, generator)
        with torch.no_grad():
            value = float(G(u_next, t0).mean()) if torch.isfinite(u_next).all() else math.nan
        if not math.isfinite(value):
            profile["diverged_at_step"] = done + k
            break
        u, done = u_next, done + k
        profile["step"].append(done)
        profile["neg_energy"].append(value)
    return u, profile


def _level0_log_density(G, u1: Tensor, geometry):
    """log p(u_0 | u_1) with the chain's own u_1: the long run continues the last level's chain."""
    t = torch.zeros(u1.shape[0], dtype=torch.long, device=u1.device)
    return conditional_log_density(G, u1, t, geometry.schedule, geometry.step_sizes_sq)
