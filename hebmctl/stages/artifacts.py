"""Opening parent artifacts for a stage: validated manifest, intact files, model rebuilt from config."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from hebmctl import priors
from hebmctl.errors import DataError
from hebmctl.io.manifest import check_lineage, read_manifest, require_intact
from hebmctl.io.state import load_module_state
from hebmctl.models.backbone import Backbone, BackboneMisfit
from hebmctl.models.energy import JointEnergy
from hebmctl.models.hvae import HierarchicalVAE
from hebmctl.models.likelihood import Likelihood, make_likelihood
from hebmctl.models.nvae import NVAE
from hebmctl.models.vlae import VLAE
from hebmctl.schemas.common import InputRef
from hebmctl.schemas.pretrain import BackboneManifest, PretrainConfig
from hebmctl.schemas.prior import PriorManifest

WEIGHTS_NAME = "weights.safetensors"


def _likelihood(c: PretrainConfig) -> Likelihood:
    return make_likelihood(c.likelihood, c.mixture_components)


BACKBONE_BUILDERS: dict[str, Callable[[PretrainConfig, tuple[int, int, int]], Backbone]] = {
    "hvae": lambda c, shape: HierarchicalVAE(shape, c.latent_dims, channels=c.channels, mlp_hidden=c.mlp_hidden, inference=c.inference,
                                             likelihood=_likelihood(c)),
    "nvae": lambda c, shape: NVAE(shape, c.groups_per_scale, group_channels=c.group_channels, channels=c.channels,
                                  cells_per_group=c.cells_per_group, likelihood=_likelihood(c)),
    "vlae": lambda c, shape: VLAE(shape, c.latent_dims, channels=c.channels, mlp_hidden=c.mlp_hidden, likelihood=_likelihood(c)),
}
"""Family name -> a function from (config, image shape (H, W, C)) to a fresh model: the one place that maps a family to a class."""


def build_backbone(config: PretrainConfig, image_shape: tuple[int, int, int]) -> Backbone:
    """A freshly initialised backbone with the architecture a pretrain config describes.

    Raises DataError when the configuration cannot fit the image size (checked before any compute).
    """
    try:
        return BACKBONE_BUILDERS[config.backbone](config, tuple(image_shape))
    except BackboneMisfit as exc:
        raise DataError(f"The {config.backbone} backbone cannot be built for {tuple(image_shape)} (H, W, C) images: {exc}.") from None


@dataclass(frozen=True)
class LoadedBackbone:
    model: Backbone
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
    energy = priors.energy_network(manifest.config, manifest.resolved_group_shapes(), manifest.label_coupling).to(device)
    load_module_state(energy, Path(folder) / ENERGY_NAME)
    energy.eval().requires_grad_(False)
    return LoadedPrior(energy=energy, manifest=manifest, manifest_sha256=sha, folder=Path(folder))


def open_prior(folder: Path | None, backbone: LoadedBackbone, device: torch.device,
               options: priors.SamplingOptions = priors.SamplingOptions()) -> tuple[priors.Prior, list[InputRef]]:
    """The prior object of a prior folder (None: the Gaussian prior) on this backbone, and its lineage entry
    (empty for the Gaussian prior)."""
    if folder is None:
        return priors.gaussian(backbone.model, device), []
    loaded = load_prior(folder, backbone, device)
    prior = priors.from_energy(loaded.manifest.config, loaded.energy, backbone.model, device, options, loaded.manifest.label_coupling)
    for name, module in prior.extra_modules().items():  # e.g. the cooperative scheme's initializer (EMA weights)
        load_module_state(module, Path(folder) / f"{name}.safetensors")
        module.eval().requires_grad_(False)
    return prior, [InputRef(role="prior", path=str(folder), kind="prior", sha256=loaded.manifest_sha256)]
