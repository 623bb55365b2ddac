"""The one place that maps a scheme name to a prior class (DESIGN §2 "priors/"): no stage branches on it."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from hebmctl.errors import ConfigError
from hebmctl.models.backbone import Backbone
from hebmctl.models.energy import JointEnergy
from hebmctl.priors.base import Prior, SamplingOptions
from hebmctl.priors.cooperative import CooperativePrior
from hebmctl.priors.diffusion import DiffusionPrior
from hebmctl.priors.energy_prior import EnergyPrior
from hebmctl.priors.gaussian import GaussianPrior
from hebmctl.priors.joint import JointPrior
from hebmctl.samplers.graphs import CaptureMode
from hebmctl.schemas.prior import LabelCoupling, TrainPriorConfig

PRIOR_CLASSES: dict[str, type[EnergyPrior]] = {cls.kind: cls for cls in (JointPrior, DiffusionPrior, CooperativePrior)}
"""Scheme (TrainPriorConfig.scheme) -> prior class."""


def energy_network(config: TrainPriorConfig, group_shapes: Sequence[Sequence[int]], coupling: LabelCoupling | None = None) -> JointEnergy:
    """A fresh energy network of the architecture a train-prior config describes (for loading weights into)."""
    return PRIOR_CLASSES[config.scheme].energy_network(config, group_shapes, coupling)


def check_labels_supported(scheme: str) -> None:
    """Raise ConfigError when `train-prior --labels` cannot train this scheme (before any compute)."""
    if not PRIOR_CLASSES[scheme].supports_labels:
        supported = ", ".join(name for name, cls in PRIOR_CLASSES.items() if cls.supports_labels)
        raise ConfigError(f"--labels is not available for --scheme {scheme} (its initializer network proposes unconditional chain "
                          f"starts, which the label coupling does not cover). Label-coupled schemes: {supported}.")


def gaussian(backbone: Backbone, device: torch.device) -> GaussianPrior:
    """The backbone's own N(0, I) prior in u-space."""
    return GaussianPrior(backbone, device)


def from_energy(config: TrainPriorConfig, energy: JointEnergy, backbone: Backbone, device: torch.device,
                options: SamplingOptions = SamplingOptions(), coupling: LabelCoupling | None = None) -> EnergyPrior:
    """The prior a train-prior artifact describes (its resolved config, its loaded energy network and, for a
    label-coupled prior, its coupling record), with the sampler's overrides applied."""
    cls = PRIOR_CLASSES[config.scheme]
    return cls(config, energy, backbone, device, options) if coupling is None else cls(config, energy, backbone, device, options, coupling)


def load(config: TrainPriorConfig | None, energy: JointEnergy | None, backbone: Backbone, device: torch.device,
         options: SamplingOptions = SamplingOptions(), coupling: LabelCoupling | None = None) -> Prior:
    """The Gaussian prior when there is no prior artifact (config None), else `from_energy`."""
    if config is None or energy is None:
        return gaussian(backbone, device)
    return from_energy(config, energy, backbone, device, options, coupling)


def for_training(config: TrainPriorConfig, backbone: Backbone, device: torch.device, compile: CaptureMode = "off",
                 coupling: LabelCoupling | None = None) -> EnergyPrior:
    """A prior with a freshly initialised energy network (seeded by config.seed, global RNG untouched) and the
    training sampler settings (K = config.langevin_steps, the training step sizes); `compile` as `SamplingOptions`;
    label heads with `coupling`."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        energy = energy_network(config, backbone.group_shapes, coupling).to(device)
    return from_energy(config, energy, backbone, device, SamplingOptions(compile=compile), coupling=coupling)
