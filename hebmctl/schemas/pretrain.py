"""Config of `hebmctl pretrain` and the manifest of a backbone artifact."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import Field, field_validator

from hebmctl.schemas.common import ManifestBase, StageConfig, absolute_data_spec, split_csv

FAMILY_DEFAULTS: dict[str, dict[str, Any]] = {
    "hvae": {"channels": 32, "free_bits": 0.25, "latent_dims": (64, 32, 16)},
    "vlae": {"channels": 32, "free_bits": 0.25, "latent_dims": (4, 4, 4)},
    "nvae": {"channels": 16, "free_bits": 0.0, "groups_per_scale": (2, 2), "group_channels": 4, "cells_per_group": 1},
}
"""Defaults of the options only one family reads, filled in when that family is chosen."""


class PretrainConfig(StageConfig):
    """Train a hierarchical VAE backbone on a data set."""

    run_defaults: ClassVar[dict[str, str]] = {"out": "backbone"}

    out: Path = Field(None, description="Backbone folder to write (default: RUN/backbone).")
    data: str = Field("builtin:mnist-10k", description="Data spec: builtin:mnist-10k, builtin:shapes, builtin:shapes-64, mnist:DIR, "
        "fashion-mnist:DIR, cifar10:PATH, folder:PATH, npz:PATH, or pooled:heldout=D,seed=S:BASE (the anchors' anomaly protocol: train "
        "on a seeded 80 % of BASE's pooled images of every class but D; docs/eval.md).")
    exclude_classes: tuple[int, ...] = Field((), description="Class ids left out of the training split, comma-separated (test-split "
        "anomaly protocol); a class of the data set that the training split lacks anyway is accepted.")
    limit: int | None = Field(None, ge=1, description="Use only N training images after exclusion (seeded random, stratified by class).")
    backbone: Literal["hvae", "nvae", "vlae"] = Field(
        "hvae",
        description="Backbone family: 'hvae' (vector groups, conditional hierarchy, decoder reads z_1), 'nvae' (spatial groups on a "
        "top-down path, every group reaches the pixels), 'vlae' (independent vector groups injected at different generator depths).",
    )
    latent_dims: tuple[int, ...] = Field(None, description="hvae, vlae: latent group sizes, bottom (z_1) to top (z_L), comma-separated. "
                                         "Default 64,32,16 (hvae), 4,4,4 (vlae: with 64,32,16 the bottom group took everything "
                                         "and the top collapsed).")
    channels: int = Field(None, ge=4, description="Width of the first conv layer (hvae, vlae: doubled at each of the two down-samplings; "
        "nvae: every layer). Default 32 (hvae, vlae), 16 (nvae).")
    mlp_hidden: int = Field(256, ge=8, description="hvae, vlae: hidden width of the MLPs between latent groups.")
    groups_per_scale: tuple[int, ...] | None = Field(
        None, description="nvae: latent groups per scale, top (lowest resolution) first, comma-separated; S entries put the latents at "
            "H/2^S .. H/2 (default 2,2)."
    )
    group_channels: int | None = Field(None, ge=1, description="nvae: channels of each spatial latent group (default 4).")
    cells_per_group: int | None = Field(None, ge=0, description="nvae: residual cells after each merged group (default 1).")
    inference: Literal["top-down", "bottom-up"] = Field("top-down", description="q(z|x) factorisation: 'top-down' q(z_L|x) prod "
        "q(z_i|z_{i+1},x), or 'bottom-up' q(z_1|x) prod q(z_{i+1}|z_i) (Joint-EBM eq. 4).")
    steps: int = Field(6000, ge=1, description="Optimizer steps.")
    batch_size: int = Field(128, ge=1, description="Images per step.")
    lr: float = Field(1e-3, gt=0, description="Peak AdamW learning rate (cosine decay to 10% over the run).")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay.")
    grad_clip: float = Field(100.0, gt=0, description="Gradient-norm clip.")
    skip_grad_norm: float | None = Field(None, gt=0, description="Skip an update whose gradient norm (before clipping) exceeds this, or "
        "is not finite (NVAE / VDVAE); skipped updates are counted, and a run that skips nearly every update stops with a message. "
        "Default: off.")
    ema_decay: float = Field(0.999, ge=0, lt=1, description="Decay of the exponential moving average of the weights; the EMA weights are "
        "the backbone's output.")
    kl_warmup_steps: int = Field(1000, ge=0, description="Steps over which the KL weight rises linearly from 0 to 1.")
    free_bits: float = Field(None, ge=0, description="Free bits in nats per latent dimension, applied per layer: the KL of layer i is "
        "floored at free_bits * dim_i in the loss. Default 0.25 (hvae, vlae), 0 (nvae, whose thousands of spatial dimensions would make "
        "the floor hundreds of nats).")
    checkpoint_every: int = Field(500, ge=1, description="Write a resumable checkpoint every N steps.")
    keep_checkpoints: int = Field(2, ge=1, description="Number of most recent checkpoints kept.")
    log_every: int = Field(50, ge=1, description="Append a line to metrics.jsonl every N steps.")
    eval_limit: int | None = Field(None, ge=1, description="Evaluate on N test images (seeded random, stratified by class; default: all).")
    seed: int = Field(0, description="Seed of every random number generator of the stage.")
    device: str = Field("auto", description="Torch device: 'auto' (CUDA when present, else CPU), 'cpu', 'cuda', ...")

    unhashed: ClassVar[frozenset[str]] = frozenset({"run", "device", "log_every", "checkpoint_every", "keep_checkpoints"})
    hashed_when_set: ClassVar[frozenset[str]] = frozenset({"groups_per_scale", "group_channels", "cells_per_group", "skip_grad_norm"})
    """Fields added with the nvae family: hashed only when set, so the fingerprints of earlier hvae backbones stay valid."""
    hashed_as_default: ClassVar[frozenset[str]] = frozenset({"eval_limit"})  # an evaluation setting: changing it does not retrain

    _data = field_validator("data", mode="before")(lambda cls, v: absolute_data_spec(v))
    _csv = field_validator("exclude_classes", "latent_dims", "groups_per_scale", mode="before")(lambda cls, v: split_csv(v))

    @classmethod
    def _derived_defaults(cls, data: dict[str, Any]) -> dict[str, Any]:
        """The chosen family's own defaults for its options (FAMILY_DEFAULTS) where they are not given."""
        family = data.get("backbone") or cls.model_fields["backbone"].default
        for key, value in FAMILY_DEFAULTS.get(family, {}).items():
            if data.get(key) is None:
                data[key] = value
        return data

    @field_validator("latent_dims")
    @classmethod
    def _positive_dims(cls, dims: tuple[int, ...]) -> tuple[int, ...]:
        if len(dims) < 1 or any(d < 1 for d in dims):
            raise ValueError("needs at least one group size, each a positive integer, e.g. 64,32,16")
        return dims


class BackboneManifest(ManifestBase):
    kind: Literal["backbone"] = Field("backbone", description="Artifact kind.")
    config: PretrainConfig = Field(description="The resolved stage config.")
    image_shape: tuple[int, int, int] = Field(description="(H, W, C) of the images the backbone was trained on.")
    group_dims: tuple[int, ...] = Field(description="Flattened latent group sizes, bottom to top.")
    group_shapes: tuple[tuple[int, ...], ...] | None = Field(None, description="Latent group shapes, bottom to top: [d] (vector) or [c, "
        "h, w] (spatial); absent in backbones written before the nvae family (vector groups).")
