"""Stage `cache-latents` (infer-posterior): u0 = T^{-1}(z), z ~ q(z | x), per split, into HDF5.

For each split, S samples per image are drawn from the backbone's posterior and mapped to
u-space (DESIGN §3). The posterior noise of the batch starting at row r is seeded by
(seed, split, r), so a run interrupted anywhere and re-run continues with exactly the numbers an
uninterrupted run would have written.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from hebmctl.data import ImageSet, load_split, to_unit_range
from hebmctl.errors import DataError
from hebmctl.io.console import console, progress_bar
from hebmctl.io.latent_store import LatentLayout, LatentWriter
from hebmctl.io.manifest import common_fields, describe_file, prepare_output, stage_fingerprint, write_manifest
from hebmctl.io.output import writes_artifact
from hebmctl.models.backbone import Backbone
from hebmctl.runtime import peak_cuda_mb, peak_rss_mb, resolve_device
from hebmctl.schemas.common import InputRef
from hebmctl.schemas.latents import CacheLatentsConfig, LatentsManifest
from hebmctl.stages.artifacts import LoadedBackbone, load_backbone

SPLIT_IDS = {"train": 0, "test": 1}


@dataclass(frozen=True)
class RunControl:
    force: bool = False


def group_names(n_layers: int) -> tuple[str, ...]:
    """'z1' (bottom) ... 'zL' (top)."""
    return tuple(f"z{i + 1}" for i in range(n_layers))


@writes_artifact
def run(config: CacheLatentsConfig, control: RunControl = RunControl()) -> LatentsManifest:
    device = resolve_device(config.device)
    backbone = load_backbone(config.backbone, device)
    data_spec = config.data or backbone.manifest.config.data
    train_exclude = backbone.manifest.config.exclude_classes if config.exclude_classes is None else config.exclude_classes
    splits = {name: load_split(data_spec, name, train_exclude if name == "train" else (), config.limit) for name in config.splits}
    for name, image_set in splits.items():
        if image_set.image_shape != tuple(backbone.manifest.image_shape):
            raise DataError(f"The {name} split of {data_spec} has images of shape {image_set.image_shape} (H, W, C), but the backbone "
                            f"{config.backbone} was trained on {tuple(backbone.manifest.image_shape)}. Use data of the backbone's size.")
    inputs = [InputRef(role="backbone", path=str(config.backbone), kind="backbone", sha256=backbone.manifest_sha256)]
    inputs += [InputRef(role=f"data:{name}", path=data_spec, kind="data", sha256=s.fingerprint(), subset=s.subset) for name, s in splits.items()]
    fingerprint = stage_fingerprint(config, inputs)
    existing = prepare_output(config.out, LatentsManifest, fingerprint, control.force)
    if existing is not None:
        console().print(f"[green]cache-latents: {config.out} is up to date[/green]")
        return existing
    metrics: dict = {"splits": {}}
    for name, image_set in splits.items():
        metrics["splits"][name] = _cache_split(config, backbone, name, image_set, fingerprint, device)
    metrics |= {"peak_rss_mb": round(peak_rss_mb(), 1), "peak_cuda_mb": peak_cuda_mb(device), "device": str(device)}
    model = backbone.model
    manifest = LatentsManifest(
        **common_fields(fingerprint),
        config=config.model_copy(update={"data": data_spec, "exclude_classes": train_exclude}),
        inputs=inputs,
        outputs=[describe_file(config.out, f"{name}.h5") for name in splits],
        metrics=metrics,
        group_dims=model.group_dims,
        group_shapes=model.group_shapes,
        group_names=group_names(model.num_layers),
    )
    write_manifest(config.out, manifest)
    console().print(f"[green]cache-latents: done[/green] {', '.join(f'{n}: {len(s)} images' for n, s in splits.items())} -> {config.out}")
    return manifest


@torch.no_grad()
def infer_u0(model: Backbone, x: torch.Tensor, n_samples: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """x `[B, C, H, W]` -> (u0, z), each `[B, S, D]`: S posterior samples per image, u0 = T^{-1}(z)."""
    features = model.repeat_features(model.encode(x), n_samples)
    z, _ = model.posterior_from_features(features, generator, sample=True)
    u0 = model.z_to_u(z)
    return u0.view(x.shape[0], n_samples, -1), z.view(x.shape[0], n_samples, -1)


def _cache_split(config: CacheLatentsConfig, backbone: LoadedBackbone, split: str, image_set: ImageSet, fingerprint: str, device: torch.device) -> dict:
    """Write `<split>.h5`, resuming a partial file; returns throughput and u0 statistics."""
    model = backbone.model
    layout = LatentLayout(
        n_rows=len(image_set), samples_per_image=config.samples_per_image, group_dims=model.group_dims,
        group_names=group_names(model.num_layers), storage_dtype=config.storage_dtype, compression=config.compression,
        rows_per_chunk=config.rows_per_chunk, store_z=config.store_z, group_shapes=model.group_shapes,
    )
    u_sum = torch.zeros(model.latent_dim, dtype=torch.float64)
    u_sq_sum = torch.zeros(model.latent_dim, dtype=torch.float64)
    t0 = time.perf_counter()
    with LatentWriter(config.out / f"{split}.h5", layout, backbone.manifest_sha256, fingerprint) as writer, progress_bar() as bar:
        first = writer.rows_written
        task = bar.add_task(f"cache-latents {split}", total=len(image_set), completed=first, unit="img", info="")
        for start in range(first, len(image_set), config.batch_size):
            stop = min(start + config.batch_size, len(image_set))
            generator = torch.Generator(device=device).manual_seed(config.seed * 1_000_003 + SPLIT_IDS[split] * 100_000_007 + start)
            u0, z = infer_u0(model, to_unit_range(image_set.images[start:stop]).to(device), config.samples_per_image, generator)
            u0_cpu = u0.cpu()
            writer.write(start, u0_cpu.numpy(), image_set.labels[start:stop], image_set.index[start:stop], z.cpu().numpy() if config.store_z else None)
            u_sum += u0_cpu.double().sum((0, 1))
            u_sq_sum += (u0_cpu.double() ** 2).sum((0, 1))
            bar.update(task, advance=stop - start)
        writer.commit()
    wall_s = time.perf_counter() - t0
    n_new = (len(image_set) - first) * config.samples_per_image
    mean = u_sum / max(n_new, 1)
    std = (u_sq_sum / max(n_new, 1) - mean**2).clamp_min(0).sqrt()
    return {
        "n_images": len(image_set),
        "wall_s": round(wall_s, 3),
        "images_per_s": round((len(image_set) - first) / max(wall_s, 1e-9), 1),
        "u0_mean_per_group": [float(g.mean()) for g in model.split_groups(mean.float())],
        "u0_std_per_group": [float(g.mean()) for g in model.split_groups(std.float())],
        "resumed_from_row": first,
    }
