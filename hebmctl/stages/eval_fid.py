"""Stage `eval fid`: FID of generated, reconstructed or given images against a data split (issue 4).

Images come from `--prior gaussian|DIR` (sampled exactly as `hebmctl sample` with the same
options), `--prior recon` (the backbone's reconstructions, posterior means, of N
reference images: the bound any prior can reach) or `--images PATH` (a PNG folder or an .npz).
Features and the Frechet distance follow clean-fid's "clean" mode (`hebmctl.metrics.fid`). The
reference statistics are a `fid-stats` artifact under `--stats-dir`, computed once per (data set
content, split, limit, Inception weights) and reused by every later evaluation.

Writes `eval/fid-<what>/`: `result.json` (key `fid`, N, the reference, timings), `grid.png`
(the first 64 scored images), manifest.

Several processes (torchrun): every rank makes the same images (sampling is not split yet), each
extracts the features of a contiguous range of whole batches, and the ranks gather them in order,
so the features are those of one process; rank 0 writes the statistics, the result and the manifest.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import numpy as np
import torch

from hebmctl import dist, priors
from hebmctl.data import ImageSet, from_unit_range, load_split, to_unit_range
from hebmctl.data.subsets import subset_positions, subset_record
from hebmctl.errors import ArtifactError, DataError, HebmctlError
from hebmctl.io.console import console, progress_bar
from hebmctl.io.hashing import sha256_file, sha256_json
from hebmctl.io.images import save_grid
from hebmctl.io.manifest import common_fields, describe_file, has_manifest, read_manifest, verify_outputs, write_manifest
from hebmctl.io.output import writes_artifact
from hebmctl.io.state import load_tensors, save_tensors
from hebmctl.metrics.fid import DEFAULT_BATCH_SIZE, InceptionFeatures, feature_statistics, frechet_distance, resolve_inception_weights
from hebmctl.runtime import resolve_device
from hebmctl.schemas.common import SCHEMA_VERSION, InputRef
from hebmctl.schemas.eval import EvalFidConfig, EvalFidManifest, FidStatsManifest
from hebmctl.stages.artifacts import LoadedBackbone, load_backbone, open_prior
from hebmctl.stages.eval_common import RunControl, backbone_manifest, finish, load_data, print_table, up_to_date

STATS_NAME = "stats.safetensors"
GRID_IMAGES = 64


@writes_artifact
def run(config: EvalFidConfig, control: RunControl = RunControl()) -> EvalFidManifest | None:
    """Evaluate (or skip when up to date); None on ranks other than 0, which write nothing."""
    device = dist.init(resolve_device(config.device))
    weights = resolve_inception_weights(config.inception_weights)
    weights_ref = InputRef(role="inception", path=str(weights), kind="weights", sha256=sha256_file(weights))
    ref_spec = config.ref or backbone_manifest(config.backbone).config.data
    ref_images, ref_data = load_data(f"reference:{config.split}", ref_spec, config.split, config.ref_limit)
    source = _Source(config, ref_images, device)
    inputs = [ref_data, weights_ref, *source.inputs]
    stats_folder, _ = reference_folder(config, ref_images, ref_data, weights_ref)
    fingerprint, existing = up_to_date(config, inputs, EvalFidManifest, control.force, "fid",
                                       lambda manifest: reference_problems(manifest, stats_folder))
    if existing is not None:
        return existing
    config.out.mkdir(parents=True, exist_ok=True)
    extractor = InceptionFeatures(weights, device)
    stats_folder, stats_sha, (mu_ref, sigma_ref) = reference_statistics(config, ref_images, ref_data, weights_ref, extractor)
    inputs.append(InputRef(role="reference", path=str(stats_folder), kind="fid-stats", sha256=stats_sha))
    images, generate_s = source.images()
    features, feature_s = _features(extractor, images, config.fid_batch_size, f"features {source.label}")
    fid = frechet_distance(*feature_statistics(features), mu_ref, sigma_ref)
    if not dist.is_main():
        return None  # rank 0 writes (DESIGN §8)
    save_grid(config.out / "grid.png", images[:GRID_IMAGES], 8)
    result = {
        "fid": fid, "n": int(len(images)), "source": source.label, "ref": ref_spec, "split": config.split,
        "ref_n": int(len(ref_images)), "mode": "clean", "inception_weights": str(weights),
        "generate_s": round(generate_s, 2), "feature_s": round(feature_s, 2),
        "feature_s_per_1000": round(1000 * feature_s / len(images), 2), "device": str(device),
    }
    manifest = finish(config, EvalFidManifest, fingerprint, inputs, result, ["grid.png"])
    print_table(f"FID ({source.label}, N = {len(images)}) vs {ref_spec} [{config.split}, {len(ref_images)} images]",
                ["quantity", "value"], [("FID", fid), ("N", len(images)), ("feature extraction s / 1000 images", result["feature_s_per_1000"])])
    return manifest


class _Source:
    """Where the scored images come from: a prior's samples, reconstructions, or an image file/folder."""

    def __init__(self, config: EvalFidConfig, ref_images: ImageSet, device: torch.device) -> None:
        self.config, self.ref_images, self.device = config, ref_images, device
        self.backbone: LoadedBackbone | None = None
        self.inputs: list[InputRef] = []
        if config.images is not None:
            self.given = _read_images(config.images, config.n)
            self.label = f"images:{config.images}"
            self.inputs.append(InputRef(role="images", path=str(config.images), kind="data", sha256=self.given.fingerprint(), subset=self.given.subset))
            return
        self.backbone = load_backbone(config.backbone, device)
        self.inputs.append(InputRef(role="backbone", path=str(config.backbone), kind="backbone", sha256=self.backbone.manifest_sha256))
        self.label = config.prior if config.prior in ("gaussian", "recon") else f"prior:{Path(config.prior).name}"
        options = priors.SamplingOptions(config.langevin_steps, config.step_size, config.step_scale)
        self.prior, prior_inputs = open_prior(config.prior_dir(), self.backbone, device, options)
        self.inputs += prior_inputs
        if config.prior == "recon" and len(ref_images) < config.n:
            raise DataError(f"--prior recon needs N = {config.n} reference images, but the {config.split} split has {len(ref_images)}. Lower --n.")
        if config.prior == "recon":  # a seeded class-stratified subset of the reference images, not the first N (issue 14)
            self.recon_rows = subset_positions(ref_images.labels, config.n)
            record = subset_record(ref_images.labels[self.recon_rows], ref_images.index[self.recon_rows], len(ref_images))
            self.inputs.append(InputRef(role="recon-images", path=ref_images.spec, kind="subset", sha256=record.index_sha256, subset=record))

    def images(self) -> tuple[np.ndarray, float]:
        """uint8 `[N, H, W, C]` and the seconds it took to make them."""
        t0 = time.perf_counter()
        if self.config.images is not None:
            return self.given.images, 0.0
        if self.config.prior == "recon":
            images = reconstruct(self.backbone, self.ref_images.images[self.recon_rows], self.config.batch_size, self.device)
        else:
            images = self._sample()
        return images, time.perf_counter() - t0

    def _sample(self) -> np.ndarray:
        """uint8 `[N, H, W, C]` sampled exactly as `hebmctl sample` with the same options (with several processes, each
        rank draws its range of whole batches, as `sample` does, and every rank gets all N, gathered in order)."""
        c, parts = self.config, []
        rows = dist.shard(c.n, c.batch_size)  # (0, N) in one process
        error = None
        with progress_bar() as bar:
            task = bar.add_task(f"sample {self.prior.kind}", total=rows[1] - rows[0], unit="img", info="")
            try:
                for batch in priors.sample_batches(self.prior, c.n, c.batch_size, c.seed, c.temperature, rows):
                    parts.append(from_unit_range(batch.x))
                    bar.update(task, advance=batch.x.shape[0])
            except HebmctlError as exc:  # a divergent chain or non-finite images, perhaps on this rank only
                error = exc
        dist.raise_first_error(error)
        mine = np.concatenate(parts) if parts else np.zeros((0, *self.backbone.model.image_shape), dtype=np.uint8)
        return dist.all_gather_rows(mine)


def _read_images(path: Path, n: int) -> ImageSet:
    """n images of a PNG folder or an .npz (key `images`): all of them when it holds n, else a seeded random subset."""
    if not path.exists():
        raise DataError(f"--images {path} does not exist. Give a folder of PNGs or an .npz with key 'images'.")
    spec = f"npz:{path}" if path.suffix == ".npz" else f"folder:{path}"
    images = load_split(spec, "all", limit=n)
    if len(images) < n:
        raise DataError(f"--images {path} holds {len(images)} images but --n asks for {n}; FIDs are only comparable at equal N. Lower --n or add images.")
    return images


@torch.no_grad()
def reconstruct(backbone: LoadedBackbone, images: np.ndarray, batch_size: int, device: torch.device) -> np.ndarray:
    """Decoder means at the posterior means: uint8 `[N, H, W, C]` -> uint8 `[N, H, W, C]`."""
    model, parts = backbone.model, []
    for start in range(0, len(images), batch_size):
        z, _ = model.posterior(to_unit_range(images[start : start + batch_size]).to(device), None, sample=False)
        parts.append(from_unit_range(model.decode(z).clamp(-1, 1)))
    return np.concatenate(parts)


def _features(extractor: InceptionFeatures, images: np.ndarray, batch_size: int | None, label: str) -> tuple[np.ndarray, float]:
    """Inception features `[N, 2048]` with a progress bar, and the seconds they took. With several processes each rank
    extracts a contiguous range of whole batches (the batches one process would run) and the ranks gather them in order."""
    t0 = time.perf_counter()
    batch_size = batch_size or DEFAULT_BATCH_SIZE.get(extractor.device.type, 8)
    start, stop = dist.shard(len(images), batch_size)
    with progress_bar() as bar:
        task = bar.add_task(label, total=stop - start, unit="img", info="")
        features = extractor(images[start:stop], batch_size, on_batch=lambda done: bar.update(task, completed=done))
    return dist.all_gather_rows(features), time.perf_counter() - t0


def _slug(spec: str) -> str:
    kind, _, argument = spec.partition(":")
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{kind}-{Path(argument).name}").strip("_")


def reference_problems(manifest: EvalFidManifest, folder: Path) -> list[str]:
    """Problems with the reference statistics in `folder` (where this evaluation's settings keep them) against the
    ones the evaluation recorded (its role "reference" input): missing, replaced since, or damaged. Such an
    evaluation is re-run, which rebuilds the cache (found by the fault drills: a damaged cache used to pass
    unnoticed while the evaluation was up to date)."""
    recorded = next((ref for ref in manifest.inputs if ref.role == "reference"), None)
    if recorded is None:
        return []
    try:
        stats, sha = read_manifest(folder, FidStatsManifest)
    except ArtifactError as exc:
        return [f"its reference statistics {folder}: {exc}"]
    if sha != recorded.sha256:
        return [f"its reference statistics {folder} are not the ones it used (replaced or changed since)"]
    return [f"its reference statistics {folder}: {problem}" for problem in verify_outputs(folder, stats)]


def reference_folder(config: EvalFidConfig, ref_images: ImageSet, ref_data: InputRef, weights_ref: InputRef) -> tuple[Path, str]:
    """(the cache folder of the reference statistics under `--stats-dir`, its key): the key is the data content,
    split, limit, weights and preprocessing mode."""
    key = sha256_json({"data": ref_data.sha256, "split": config.split, "limit": config.ref_limit, "weights": weights_ref.sha256,
                       "mode": "clean", "schema": SCHEMA_VERSION})
    return config.stats_dir / f"{_slug(ref_data.path)}-{config.split}-{len(ref_images)}-{key[:12]}", key


def reference_statistics(
    config: EvalFidConfig, ref_images: ImageSet, ref_data: InputRef, weights_ref: InputRef, extractor: InceptionFeatures
) -> tuple[Path, str, tuple[np.ndarray, np.ndarray]]:
    """(folder, manifest sha256, (mu `[2048]`, sigma `[2048, 2048]`)) of the reference split, cached.

    The cache key is the data content, split, limit, weights and preprocessing mode; a folder whose
    manifest or files are damaged is recomputed.
    """
    folder, key = reference_folder(config, ref_images, ref_data, weights_ref)
    if has_manifest(folder):
        try:
            manifest, sha = read_manifest(folder, FidStatsManifest)
        except ArtifactError:  # a damaged manifest: this cache is recomputed like one with damaged files
            manifest = None
        expected = {"fingerprint": key, "split": config.split, "limit": config.ref_limit, "n_images": len(ref_images),
                    "metrics": {"n_images": len(ref_images)}, "inputs": [ref_data, weights_ref]}
        if manifest is not None and all(getattr(manifest, k) == v for k, v in expected.items()) and not verify_outputs(folder, manifest):
            tensors, _ = load_tensors(folder / STATS_NAME)
            console().print(f"eval fid: reference statistics from {folder}")
            return folder, sha, (tensors["mu"].numpy(), tensors["sigma"].numpy())
        console().print(f"[yellow]eval fid: {folder} is damaged or stale; recomputing it[/yellow]")
    features, _ = _features(extractor, ref_images.images, config.fid_batch_size, f"reference {config.split}")
    mu, sigma = feature_statistics(features)

    def write() -> str:
        folder.mkdir(parents=True, exist_ok=True)
        save_tensors(folder / STATS_NAME, {"mu": torch.from_numpy(mu), "sigma": torch.from_numpy(sigma)})
        manifest = FidStatsManifest(**common_fields(key), inputs=[ref_data, weights_ref], outputs=[describe_file(folder, STATS_NAME)],
                                    metrics={"n_images": len(ref_images)}, data=ref_data.path, split=config.split,
                                    limit=config.ref_limit, n_images=len(ref_images))
        return write_manifest(folder, manifest)

    return folder, dist.main_decides(write), (mu, sigma)  # rank 0 writes; every rank gets the manifest's sha256
