"""Stage `sample`: images from the backbone with the Gaussian prior or a trained EBM prior (issue 3).

u_0 comes from N(0, I) (gaussian), K Langevin steps from N(0, I) (joint), or reverse diffusion
u_T ~ N(0, I) -> u_0 (diffusion); then z = T(tau * u_0) and x = decoder mean(z) (DESIGN §3).
Writes `grid.png`, `images/NNNNNN.png`, `images.npz` (uint8 `images [N, H, W, C]`),
`latents.safetensors` (`u0`, `z`), `chains.json` (per-step chain statistics), optional
hierarchical and trajectory figures, then the manifest. `--class` / `--guidance` sample a label-coupled prior's
class-conditional (guided, composed) energy at its coupled levels; grid.png then holds one class per row.

Several processes (torchrun, DESIGN §8): each rank draws a contiguous range of whole batches (each batch seeded by
(seed, its first image) as in one process), rank 0 gathers them in order and writes the very files one process
writes (the same images and latents, bit for bit), figures included; the other ranks return None.
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

from hebmctl import dist, priors
from hebmctl.data import from_unit_range
from hebmctl.errors import ConfigError, HebmctlError
from hebmctl.io.atomic import write_text, write_with
from hebmctl.io.console import console, progress_bar
from hebmctl.io.images import save_grid, save_png
from hebmctl.io.manifest import common_fields, describe_file, prepare_output, stage_fingerprint, write_manifest
from hebmctl.io.output import writes_artifact
from hebmctl.io.plots import save_line_plot
from hebmctl.io.state import save_tensors
from hebmctl.runtime import cuda_matmul_precision, peak_rss_mb, resolve_device
from hebmctl.samplers import ChainStats, langevin
from hebmctl.samplers.graphs import capture_enabled
from hebmctl.schemas.common import InputRef
from hebmctl.schemas.sample import SampleConfig, SamplesManifest, class_members
from hebmctl.stages import inpainting
from hebmctl.stages.artifacts import load_backbone, open_prior

GRID_COLUMNS = 8
TRAVERSE_STEPS, TRAVERSE_RANGE, DEFAULT_TRAVERSE_DIMS = 9, 3.0, 10


@dataclass(frozen=True)
class RunControl:
    force: bool = False


def sampling_options(config: SampleConfig) -> priors.SamplingOptions:
    """The sampler overrides of a sample config (None keeps the prior's training value; for the diffusion
    scheme with K != K_train every s_t is scaled by sqrt(K_train / K), CDRL's fewer-steps adjustment)."""
    return priors.SamplingOptions(config.langevin_steps, config.step_size, config.step_scale, config.compile)


@writes_artifact
def run(config: SampleConfig, control: RunControl = RunControl()) -> SamplesManifest | None:
    """Sample (or skip when up to date); None on ranks other than 0, which write nothing."""
    device = dist.init(resolve_device(config.device))
    with cuda_matmul_precision(device, config.tf32):
        return _run(config, control, device)


def _run(config: SampleConfig, control: RunControl, device: torch.device) -> SamplesManifest | None:
    capture_enabled(config.compile, device)  # --compile on without CUDA: refused before any folder work
    backbone = load_backbone(config.backbone, device)
    _check_traverse(config, backbone.model.num_layers)
    inpaint_job = inpainting.prepare(config, backbone.model)  # checks --inpaint / --mask before any compute
    if inpaint_job is not None and dist.world_size() > 1:
        raise ConfigError("sample --inpaint runs in one process (its images are few): run it without torchrun.")
    prior, prior_inputs = open_prior(config.prior_dir(), backbone, device, sampling_options(config))
    condition = class_condition(config, prior)
    inputs = [InputRef(role="backbone", path=str(config.backbone), kind="backbone", sha256=backbone.manifest_sha256), *prior_inputs]
    inputs += inpaint_job.input_refs(config) if inpaint_job else []
    fingerprint = stage_fingerprint(config, inputs)
    existing = prepare_output(config.out, SamplesManifest, fingerprint, control.force)
    if existing is not None:
        console().print(f"[green]sample: {config.out} is up to date[/green]")
        return existing
    out = config.out
    out.mkdir(parents=True, exist_ok=True)
    if inpaint_job is not None:
        return _finish_inpainting(out, config, prior, inpaint_job, fingerprint, inputs)
    u0, z, images, chain_stats, wall_s = generate(config, prior, condition)
    if not dist.is_main():
        return None  # rank 0 writes (DESIGN §8)
    names = _write_samples(out, u0, z, images, chain_stats, GRID_COLUMNS * max(GRID_COLUMNS, config.class_rows()))
    if config.hierarchical:
        names += _write_hierarchical(out, config, prior, u0[:GRID_COLUMNS])
    long_run: dict = {}
    if config.traverse:
        traverse_names, long_run["traverse"] = _write_traversals(out, config, prior, u0[:1])
        names += traverse_names
    if config.trajectory:
        trajectory_names, long_run = _write_trajectory(out, config, prior)
        names += trajectory_names
    metrics = long_run | {"wall_s": round(wall_s, 3), "images_per_s": round(config.n / max(wall_s, 1e-9), 2),
               "pixel_saturation": float(np.mean((images == 0) | (images == 255))), "peak_rss_mb": round(peak_rss_mb(), 1), "device": str(device)}
    manifest = SamplesManifest(**common_fields(fingerprint), config=config, inputs=inputs, outputs=[describe_file(out, n) for n in names],
                               metrics=metrics, prior_kind=prior.kind, sampler=prior.describe(config.temperature, config.seed)
                               | _describe_condition(config, prior))
    write_manifest(out, manifest)
    console().print(f"[green]sample: done[/green] {config.n} images from the {prior.kind} prior in {wall_s:.1f} s -> {out}")
    return manifest


def _finish_inpainting(out: Path, config: SampleConfig, prior: priors.Prior, job: inpainting.InpaintJob, fingerprint: str,
                       inputs: list[InputRef]) -> SamplesManifest:
    """`--inpaint`: the inpainting outputs (`hebmctl.stages.inpainting`) and the manifest."""
    names, metrics, settings = inpainting.write(out, config, prior, job)
    metrics |= {"peak_rss_mb": round(peak_rss_mb(), 1), "device": str(prior.device)}
    manifest = SamplesManifest(**common_fields(fingerprint), config=config, inputs=inputs, outputs=[describe_file(out, n) for n in names],
                               metrics=metrics, prior_kind=prior.kind, sampler=prior.describe(config.temperature, config.seed) | settings)
    write_manifest(out, manifest)
    console().print(f"[green]sample: done[/green] {metrics['n_images']} images inpainted x {job.draws} draws with the {prior.kind} "
                    f"prior -> {out}")
    return manifest


def class_condition(config: SampleConfig, prior: priors.Prior) -> priors.ClassCondition | None:
    """The targets `[n, M]` of --class (image i takes row (i // GRID_COLUMNS) mod R of each of the M lists, so each grid
    row holds one class) and --guidance, checked against the prior before any compute; None without --class."""
    if config.classes is None:
        return None
    heads = prior.labels
    if heads is None:
        raise ConfigError(f"--class needs a prior trained with train-prior --labels; {config.prior} is an unlabelled {prior.kind} prior.")
    wrong = sorted({c for v in config.classes for e in v for c in class_members(e) if c >= heads.n_classes})
    if wrong:
        raise ConfigError(f"--class {','.join(map(str, wrong))}: the prior {config.prior} was trained on {heads.n_classes} classes "
                          f"(0 .. {heads.n_classes - 1}).")
    if config.guidance and not heads.coupling.null_class:
        raise ConfigError(f"--guidance needs a null class: the prior {config.prior} was trained without label dropout. Train it with "
                          "train-prior --labels --label-dropout 0.1 (CDRL sec. 3.5), or sample without --guidance.")
    rows = (torch.arange(config.n) // GRID_COLUMNS) % config.class_rows()  # [n]
    lists = [torch.tensor([class_members(e)[0] for e in v])[rows % len(v)] for v in config.classes]  # M x [n]
    return priors.ClassCondition(torch.stack(lists, dim=1).to(prior.device), float(config.guidance or 0.0),
                                 _class_set_members(config, rows, heads.n_classes), config.compose or "sum")


_COMPOSITIONS = {"sum": "product of experts (sum of energies)",
                 "conjunction": "conjunction (the marginal once plus each expert's difference from it)"}


def _class_set_members(config: SampleConfig, rows: Tensor, n_classes: int) -> Tensor | None:
    """`[n, M, C]` bool, the classes each image's experts admit, when some --class expert is a '+' set; else None."""
    if all(isinstance(e, int) for v in config.classes for e in v):
        return None
    tables = [priors.class_set_table([class_members(e) for e in experts], n_classes) for experts in config.classes]  # [len, C]
    return torch.stack([table[rows % len(table)] for table in tables], dim=1)


def _describe_condition(config: SampleConfig, prior: priors.Prior) -> dict:
    """The manifest's record of --class / --guidance (the prior is label-coupled: `class_condition` checked it)."""
    if config.classes is None:
        return {}
    classes = [[e if isinstance(e, int) else list(e) for e in v] for v in config.classes]  # a '+' set as a list of classes
    return {"class_condition": {"classes": classes, "grid_rows": config.class_rows(),
                                "composition": _COMPOSITIONS[config.compose or "sum"] if len(config.classes) > 1 else None,
                                "guidance": config.guidance or 0.0, "coupled_level": prior.coupled_levels()}}


def generate(config: SampleConfig, prior: priors.Prior,
             condition: priors.ClassCondition | None = None) -> tuple[Tensor, Tensor, np.ndarray, list[list[ChainStats]], float]:
    """Batched sampling (`priors.sample_batches`: batch b draws from a generator seeded by (seed, b)), under the class
    condition when given. Returns u0, z `[n, D]`, uint8 images `[n, H, W, C]`, the chain statistics per batch and the
    seconds taken. With several processes each rank draws its range of whole batches (`dist.shard`) and every rank gets
    all n rows, gathered in order; the chain statistics are only this rank's batches' (rank 0: the first ones)."""
    rows = dist.shard(config.n, config.batch_size)  # (0, n) in one process
    u_parts, z_parts, image_parts, stats = [], [], [], []
    t0 = time.perf_counter()
    error = None
    with progress_bar() as bar:
        task = bar.add_task(f"sample {prior.kind}", total=rows[1] - rows[0], unit="img", info="")
        try:
            for batch in priors.sample_batches(prior, config.n, config.batch_size, config.seed, config.temperature, rows,
                                                  condition):
                u_parts.append(batch.u0), z_parts.append(batch.z), image_parts.append(from_unit_range(batch.x)), stats.append(batch.stats)
                bar.update(task, advance=batch.u0.shape[0])
        except HebmctlError as exc:  # a divergent chain or non-finite images, perhaps on this rank only
            error = exc
    dist.raise_first_error(error)
    u0, z, images = _gather(_cat(u_parts, prior), _cat(z_parts, prior), _cat_images(image_parts, prior))
    return u0, z, images, stats, time.perf_counter() - t0


def _cat(parts: list[Tensor], prior: priors.Prior) -> Tensor:
    """`[rows, D]` float32 of this rank's batches (a rank may have none)."""
    return torch.cat(parts) if parts else torch.zeros((0, prior.backbone.latent_dim))


def _cat_images(parts: list[np.ndarray], prior: priors.Prior) -> np.ndarray:
    """uint8 `[rows, H, W, C]` of this rank's batches (a rank may have none)."""
    return np.concatenate(parts) if parts else np.zeros((0, *prior.backbone.image_shape), dtype=np.uint8)


def _gather(u0: Tensor, z: Tensor, images: np.ndarray) -> tuple[Tensor, Tensor, np.ndarray]:
    """Every rank's rows in rank order (the one-process order); the arrays themselves in one process."""
    if dist.world_size() == 1:
        return u0, z, images
    return torch.from_numpy(dist.all_gather_rows(u0.numpy())), torch.from_numpy(dist.all_gather_rows(z.numpy())), dist.all_gather_rows(images)


def _write_samples(out: Path, u0: Tensor, z: Tensor, images: np.ndarray, chain_stats: list[list[ChainStats]], grid_images: int) -> list[str]:
    """grid.png (the first grid_images images, GRID_COLUMNS per row), the images, latents and chain statistics."""
    save_grid(out / "grid.png", images[:grid_images], GRID_COLUMNS)
    (out / "images").mkdir(exist_ok=True)
    for k, image in enumerate(images):
        save_png(out / "images" / f"{k:06d}.png", image)
    write_with(out / "images.npz", lambda tmp: np.savez(open(tmp, "wb"), images=images))
    save_tensors(out / "latents.safetensors", {"u0": u0, "z": z})
    first_batch = [s.to_dict() for s in chain_stats[0]] if chain_stats else []
    write_text(out / "chains.json", json.dumps({"first_batch_levels": first_batch}, indent=1))
    return ["grid.png", "images.npz", "latents.safetensors", "chains.json"]


@torch.no_grad()
def _decode(prior: priors.Prior, u: Tensor, temperature: float) -> np.ndarray:
    model = prior.backbone
    return from_unit_range(model.decode(model.u_to_z(temperature * u)).clamp(-1, 1).cpu())


def _write_hierarchical(out: Path, config: SampleConfig, prior: priors.Prior, base_u: Tensor) -> list[str]:
    """hierarchical_zI.png: row r keeps sample r's other layers and redraws layer I in each column."""
    model, names = prior.backbone, []
    n_base = base_u.shape[0]
    u_fixed = base_u.repeat_interleave(GRID_COLUMNS, dim=0)  # [n_base * 8, D]
    for layer in range(model.num_layers):
        mask = model.layer_mask({layer}, prior.device)
        generator = torch.Generator(device=prior.device).manual_seed(config.seed * 7919 + layer)
        u_new = prior.resample_masked(u_fixed, mask, generator)
        images = _decode(prior, u_new, config.temperature)
        name = f"hierarchical_z{layer + 1}.png"
        save_grid(out / name, images.reshape(n_base * GRID_COLUMNS, *images.shape[1:]), GRID_COLUMNS)
        names.append(name)
    return names


def _check_traverse(config: SampleConfig, num_layers: int) -> None:
    if config.traverse and max(config.traverse) > num_layers:
        raise ConfigError(f"--traverse {max(config.traverse)}: the backbone has {num_layers} latent layers (z1 = bottom ... z{num_layers} = top).")


def _write_traversals(out: Path, config: SampleConfig, prior: priors.Prior, base_u: Tensor) -> tuple[list[str], dict]:
    """traverse_zI.png per layer I of --traverse: rows = the layer's u-coordinates that move the image most,
    columns = that coordinate set to TRAVERSE_STEPS values in [-3, 3], every other coordinate of base_u `[1, D]`
    (the first sample) fixed. u-space units are the Gaussian prior's std, so +-3 spans its range
    (Hier-EBM Fig. 11 traverses the same way). Returns the file names and, per layer, the chosen
    coordinates (index within the flattened layer) with their image change (mean |x(+3) - x(-3)| in [-1, 1] units)."""
    model, names, record = prior.backbone, [], {}
    values = torch.linspace(-TRAVERSE_RANGE, TRAVERSE_RANGE, TRAVERSE_STEPS, device=base_u.device)
    n_rows = config.traverse_dims or DEFAULT_TRAVERSE_DIMS
    for layer in sorted(set(config.traverse)):
        columns = torch.nonzero(model.layer_mask({layer - 1}, base_u.device)).flatten()  # this layer's coordinates in [D]
        change = _sweep_change(prior, base_u, columns, config.temperature)
        order = torch.argsort(change, descending=True)[:n_rows]
        u = base_u.repeat(len(order) * TRAVERSE_STEPS, 1)
        rows = torch.arange(len(order), device=u.device).repeat_interleave(TRAVERSE_STEPS)
        u[torch.arange(u.shape[0]), columns[order][rows]] = values.repeat(len(order))
        name = f"traverse_z{layer}.png"
        save_grid(out / name, _decode(prior, u, config.temperature), TRAVERSE_STEPS)
        names.append(name)
        first = int(columns[0])
        record[f"z{layer}"] = [{"coordinate": int(columns[k]) - first, "image_change": round(float(change[k]), 5)} for k in order]
    return names, record


@torch.no_grad()
def _sweep_change(prior: priors.Prior, base_u: Tensor, columns: Tensor, temperature: float, batch: int = 256) -> Tensor:
    """Mean |x(u_j = +3) - x(u_j = -3)| `[len(columns)]` for each coordinate j in columns, base_u `[1, D]` otherwise."""
    model, parts = prior.backbone, []
    for start in range(0, len(columns), batch):
        chosen = columns[start : start + batch]
        u = base_u.repeat(2 * len(chosen), 1)
        index = torch.arange(len(chosen), device=u.device)
        u[index, chosen], u[index + len(chosen), chosen] = -TRAVERSE_RANGE, TRAVERSE_RANGE
        x = model.decode(model.u_to_z(temperature * u))
        parts.append((x[len(chosen):] - x[: len(chosen)]).abs().flatten(1).mean(1))
    return torch.cat(parts)


def _write_trajectory(out: Path, config: SampleConfig, prior: priors.Prior) -> tuple[list[str], dict]:
    """trajectory.png (images along the chain: one row per level / checkpoint of the chain),
    energy_profile.png and long_run.png (a long chain from the final samples: it must not saturate)."""
    generator = torch.Generator(device=prior.device).manual_seed(config.seed + 17)
    u_top = torch.randn((GRID_COLUMNS, prior.backbone.latent_dim), generator=generator, device=prior.device)
    chain = prior.trajectory(u_top, generator)
    if chain is None:
        return [], {}
    images = np.concatenate([_decode(prior, r, config.temperature) for r in chain.rows])
    save_grid(out / "trajectory.png", images, GRID_COLUMNS)
    u_long, profile = _long_run(chain.profile_energy, chain.log_density, chain.u_end, config.trajectory_steps, chain.step, generator)
    save_grid(out / "long_run.png", _decode(prior, u_long, config.temperature), GRID_COLUMNS)
    diverged = profile["diverged_at_step"]
    title = f"{prior.kind} prior: {config.trajectory_steps}-step run from the samples"
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


def _long_run(profile_energy, log_density, u0: Tensor, n_steps: int, step: float, generator: torch.Generator) -> tuple[Tensor, dict]:
    """Langevin for n_steps from u0, recording the batch mean of profile_energy (the negative energy F(T(u)),
    at level 0 for the diffusion scheme) at ~PROFILE_POINTS evenly spaced steps.

    A chain that leaves the finite numbers is divergence, not an error: the run stops there, the
    last finite state is returned and `diverged_at_step` says when (None if it never did).
    """
    chunk = max(1, n_steps // PROFILE_POINTS)
    u, done = u0, 0
    with torch.no_grad():
        profile: dict = {"step": [0], "neg_energy": [float(profile_energy(u).mean())], "diverged_at_step": None}
    while done < n_steps:
        k = min(chunk, n_steps - done)
        u_next, _ = langevin(log_density, u, k, step, generator)
        with torch.no_grad():
            value = float(profile_energy(u_next).mean()) if torch.isfinite(u_next).all() else math.nan
        if not math.isfinite(value):
            profile["diverged_at_step"] = done + k
            break
        u, done = u_next, done + k
        profile["step"].append(done)
        profile["neg_energy"].append(value)
    return u, profile
