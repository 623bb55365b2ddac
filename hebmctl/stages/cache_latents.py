"""Stage `cache-latents` (infer-posterior): u0 = T^{-1}(z), z ~ q(z | x), per split, into HDF5.

For each split, S samples per image are drawn from the backbone's posterior and mapped to
u-space (DESIGN §3). The posterior noise of the batch starting at row r is seeded by
(seed, split, r), so a run interrupted anywhere and re-run continues with exactly the numbers an
uninterrupted run would have written.

Several processes (torchrun): each rank infers a contiguous range of whole batches (the same batches,
hence the same noise, as one process) into its own part file `.<split>.rows-<start>-<stop>.h5`; rank 0
joins the parts into `<split>.h5` with the writes one process makes, then writes the manifest. An
interrupted run resumes its parts when re-run with the same number of processes; with another number
the split's rows are inferred again (parts of other row ranges are deleted).
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from hebmctl import dist
from hebmctl.data import ImageSet, load_split, to_unit_range
from hebmctl.errors import DataError
from hebmctl.io.console import console, progress_bar
from hebmctl.io.latent_store import LatentLayout, LatentWriter, join_parts
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
def run(config: CacheLatentsConfig, control: RunControl = RunControl()) -> LatentsManifest | None:
    """Cache every split (or skip when up to date); None on ranks other than 0, which write no manifest."""
    device = dist.init(resolve_device(config.device))
    backbone = load_backbone(config.backbone, device)
    data_spec = config.data or backbone.manifest.config.data
    train_exclude = backbone.manifest.config.exclude_classes if config.exclude_classes is None else config.exclude_classes
    splits = {name: load_split(data_spec, name, train_exclude if name == "train" else (), config.limit) for name in config.splits}
    for name, image_set in splits.items():
        if image_set.image_shape != tuple(backbone.manifest.image_shape):
            raise DataError(f"The {name} split of {data_spec} has images of shape {image_set.image_shape} (H, W, C), but the backbone "
                            f"{config.backbone} was trained on {tuple(backbone.manifest.image_shape)}. Use data of the backbone's size.")
    inputs = [InputRef(role="backbone", path=str(config.backbone), kind="backbone", sha256=backbone.manifest_sha256)]
    inputs += [InputRef(role=f"data:{name}", path=data_spec, kind="data", sha256=s.fingerprint()) for name, s in splits.items()]
    fingerprint = stage_fingerprint(config, inputs)
    existing = prepare_output(config.out, LatentsManifest, fingerprint, control.force)
    if existing is not None:
        console().print(f"[green]cache-latents: {config.out} is up to date[/green]")
        return existing
    metrics: dict = {"splits": {}}
    for name, image_set in splits.items():
        metrics["splits"][name] = _cache_split(config, backbone, name, image_set, fingerprint, device)
    if not dist.is_main():
        return None  # rank 0 joined the parts and writes the manifest (DESIGN §8)
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
    path = config.out / f"{split}.h5"
    rows = dist.shard(len(image_set), config.batch_size)  # (0, N) in one process
    _remove_stale_parts(path, len(image_set), config.batch_size)
    t0 = time.perf_counter()
    target = path if dist.world_size() == 1 else part_path(path, *rows)
    first, u_sum, u_sq_sum = _infer_rows(config, backbone, split, image_set, rows, target, layout, fingerprint, device)
    if dist.world_size() > 1:
        first, u_sum, u_sq_sum = _join(config, path, layout, backbone.manifest_sha256, fingerprint, first, u_sum, u_sq_sum)
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


def _infer_rows(config: CacheLatentsConfig, backbone: LoadedBackbone, split: str, image_set: ImageSet, rows: tuple[int, int], path: Path,
                layout: LatentLayout, fingerprint: str, device: torch.device) -> tuple[int, torch.Tensor, torch.Tensor]:
    """Infer rows `[start, stop)` of the split into the latent file `path` (their own file: row 0 of `path` is row `start`),
    resuming it; returns (rows found already written, sum and sum of squares of the new u0 `[D]`, float64)."""
    model = backbone.model
    u_sum = torch.zeros(model.latent_dim, dtype=torch.float64)
    u_sq_sum = torch.zeros(model.latent_dim, dtype=torch.float64)
    if rows[1] == rows[0]:
        return 0, u_sum, u_sq_sum  # more processes than batches: nothing for this one
    layout = dataclasses.replace(layout, n_rows=rows[1] - rows[0])
    with LatentWriter(path, layout, backbone.manifest_sha256, fingerprint) as writer, progress_bar() as bar:
        first = writer.rows_written
        task = bar.add_task(f"cache-latents {split}", total=layout.n_rows, completed=first, unit="img", info="")
        for start in range(rows[0] + first, rows[1], config.batch_size):
            stop = min(start + config.batch_size, rows[1])
            generator = torch.Generator(device=device).manual_seed(config.seed * 1_000_003 + SPLIT_IDS[split] * 100_000_007 + start)
            u0, z = infer_u0(model, to_unit_range(image_set.images[start:stop]).to(device), config.samples_per_image, generator)
            u0_cpu = u0.cpu()
            writer.write(start - rows[0], u0_cpu.numpy(), image_set.labels[start:stop], image_set.index[start:stop],
                         z.cpu().numpy() if config.store_z else None)
            u_sum += u0_cpu.double().sum((0, 1))
            u_sq_sum += (u0_cpu.double() ** 2).sum((0, 1))
            bar.update(task, advance=stop - start)
        writer.commit()
    return first, u_sum, u_sq_sum


def part_path(path: Path, start: int, stop: int) -> Path:
    """The part file of rows `[start, stop)` of the split file `path` (several processes)."""
    return path.with_name(f".{path.stem}.rows-{start:09d}-{stop:09d}.h5")


def _remove_stale_parts(path: Path, n_rows: int, batch_size: int) -> None:
    """Rank 0 deletes part files (and their .tmp) of other row ranges: left by a run with another number of processes."""
    if not dist.is_main():
        return
    keep = {part_path(path, a, b).name for a, b in dist.shards(n_rows, batch_size)} if dist.world_size() > 1 else set()
    for stale in path.parent.glob(f".{path.stem}.rows-*"):
        if stale.name.removesuffix(".tmp") not in keep:
            stale.unlink()


def _join(config: CacheLatentsConfig, path: Path, layout: LatentLayout, backbone_sha256: str, fingerprint: str, resumed_rows: int,
          u_sum: torch.Tensor, u_sq_sum: torch.Tensor) -> tuple[int, torch.Tensor, torch.Tensor]:
    """Wait for every rank's part, let rank 0 join them into `path`; returns (rows resumed by all ranks, u0 sums `[D]` over all ranks)."""
    both = dist.global_sum(torch.cat([u_sum, u_sq_sum, torch.tensor([float(resumed_rows)], dtype=torch.float64)]))
    dist.barrier(f"every part of {path.name} written")
    if dist.is_main():
        parts = [(part_path(path, a, b), a) for a, b in dist.shards(layout.n_rows, config.batch_size) if b > a]
        join_parts(path, layout, parts, backbone_sha256, fingerprint, config.batch_size)
    dim = u_sum.numel()
    return int(both[-1]), both[:dim], both[dim : 2 * dim]
