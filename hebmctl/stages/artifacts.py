"""Opening parent artifacts for a stage: validated manifest, intact files, model rebuilt from config."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from hebmctl.io.manifest import check_lineage, read_manifest, require_intact
from hebmctl.io.state import load_module_state
from hebmctl.models.energy import JointEnergy
from hebmctl.models.hvae import HierarchicalVAE
from hebmctl.schemas.pretrain import BackboneManifest, PretrainConfig
from hebmctl.schemas.prior import PriorManifest, TrainPriorConfig

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


ENERGY_NAME = "energy.safetensors"


def build_energy(config: TrainPriorConfig, group_dims: tuple[int, ...]) -> JointEnergy:
    """A freshly initialised energy network with the architecture a train-prior config describes."""
    return JointEnergy(
        group_dims=group_dims,
        width=config.width,
        depth=config.depth,
        activation=config.activation,
        spectral_norm=config.spectral_norm,
        n_levels=config.T if config.scheme == "diffusion" else 0,
        time_embed_dim=config.time_embed_dim,
    )


@dataclass(frozen=True)
class LoadedPrior:
    energy: JointEnergy
    manifest: PriorManifest
    manifest_sha256: str
    folder: Path


def load_prior(folder: Path, backbone: LoadedBackbone, device: torch.device) -> LoadedPrior:
    """Read a prior artifact (EMA weights) and check that it was trained on this backbone."""
    manifest, sha = read_manifest(folder, PriorManifest)
    check_lineage(f"The prior {folder}", manifest.input("backbone").sha256, backbone.folder, backbone.manifest_sha256, folder)
    require_intact(folder, manifest)
    energy = build_energy(manifest.config, manifest.group_dims).to(device)
    load_module_state(energy, Path(folder) / ENERGY_NAME)
    energy.eval().requires_grad_(False)
    return LoadedPrior(energy=energy, manifest=manifest, manifest_sha256=sha, folder=Path(folder))
