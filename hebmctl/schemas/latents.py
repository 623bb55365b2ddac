"""Config of `hebmctl cache-latents` and the manifest of a latent cache."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar, Literal

from pydantic import Field, field_validator

from hebmctl.schemas.common import ManifestBase, StageConfig, absolute_data_spec, split_csv


class CacheLatentsConfig(StageConfig):
    """Infer posterior latents u0 = T^{-1}(z), z ~ q(z|x), for each split, into HDF5."""

    run_defaults: ClassVar[dict[str, str]] = {"backbone": "backbone", "out": "latents"}

    backbone: Path = Field(None, description="Backbone folder to read (default: RUN/backbone).")
    out: Path = Field(None, description="Latent cache folder to write (default: RUN/latents).")
    data: str | None = Field(None, description="Data spec (default: the data the backbone was trained on).")
    splits: tuple[Literal["train", "test"], ...] = Field(("train", "test"), description="Splits to cache, comma-separated; one HDF5 file "
                                                                                        "each.")
    exclude_classes: tuple[int, ...] | None = Field(None, description="Classes left out of the TRAIN split (default: the backbone's). The "
                                                                      "test split is always complete.")
    limit: int | None = Field(None, ge=1, description="Cache only N images of each split (seeded random, stratified by class).")
    samples_per_image: int = Field(1, ge=1, description="S: posterior samples per image (u0 has shape [N, S, D]).")
    batch_size: int = Field(512, ge=1, description="Images per encoder batch.")
    storage_dtype: Literal["float32", "float16"] = Field("float32", description="Element type of the stored latents.")
    compression: Literal["none", "gzip", "lzf"] = Field("none", description="HDF5 compression filter.")
    store_z: bool = Field(False, description="Also store z = T(u0) (dataset 'z').")
    rows_per_chunk: int = Field(1024, ge=1, description="HDF5 chunk size in rows (images).")
    seed: int = Field(0, description="Seed of the posterior sampling noise.")
    device: str = Field("auto", description="Torch device: 'auto' (CUDA when present, else CPU), 'cpu', 'cuda', ...")

    unhashed: ClassVar[frozenset[str]] = frozenset({"run", "device"})

    _data = field_validator("data", mode="before")(lambda cls, v: absolute_data_spec(v))
    _csv = field_validator("splits", "exclude_classes", mode="before")(lambda cls, v: split_csv(v))


class LatentsManifest(ManifestBase):
    kind: Literal["latents"] = Field("latents", description="Artifact kind.")
    config: CacheLatentsConfig = Field(description="The resolved stage config.")
    group_dims: tuple[int, ...] = Field(description="Latent group sizes, bottom to top; u0's last axis is their concatenation.")
    group_names: tuple[str, ...] = Field(description="Names of the latent groups, bottom to top.")
    group_shapes: tuple[tuple[int, ...], ...] | None = Field(None, description="Latent group shapes, bottom to top ([d] or [c, h, w]); "
        "absent in caches written before spatial groups (vector groups).")
