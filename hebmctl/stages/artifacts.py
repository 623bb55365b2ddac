"""Opening parent artifacts for a stage: validated manifest, intact files, model rebuilt from config."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from hebmctl.io.manifest import read_manifest, require_intact
from hebmctl.io.state import load_module_state
from hebmctl.models.hvae import HierarchicalVAE
from hebmctl.schemas.pretrain import BackboneManifest, PretrainConfig

WEIGHTS_NAME = "weights.safetensors"


def build_backbone(config: PretrainConfig, image_shape: tuple[int, int, int]) -> HierarchicalVAE:
    """A freshly initialised backbone with the architecture a pretrain config describes."""
    return HierarchicalVAE(
        image_shape=image_shape,
        latent_dims=config.latent_dims,
        channels=config.channels,
        mlp_hidden=config.mlp_hidden,
        inference=config.inference,
    )


@dataclass(frozen=True)
class LoadedBackbone:
    model: HierarchicalVAE
    manifest: BackboneManifest
    manifest_sha256: str
    folder: Path


def load_backbone(folder: Path, device: torch.device) -> LoadedBackbone:
    """Read a backbone artifact (EMA weights), in eval mode, with gradients off for its parameters."""
    manifest, sha = read_manifest(folder, BackboneManifest)
    require_intact(folder, manifest)
    model = build_backbone(manifest.config, manifest.image_shape).to(device)
    load_module_state(model, Path(folder) / WEIGHTS_NAME)
    model.eval().requires_grad_(False)
    return LoadedBackbone(model=model, manifest=manifest, manifest_sha256=sha, folder=Path(folder))
