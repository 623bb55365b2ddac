"""The one place that maps a scheme name to a prior class (DESIGN §2 "priors/"): no stage branches on it."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from hebmctl.models.backbone import Backbone
from hebmctl.models.energy import JointEnergy
from hebmctl.priors.base import Prior, SamplingOptions
from hebmctl.priors.cooperative import CooperativePrior
from hebmctl.priors.diffusion import DiffusionPrior
from hebmctl.priors.energy_prior import EnergyPrior
from hebmctl.priors.gaussian import GaussianPrior
from hebmctl.priors.joint import JointPrior
from hebmctl.samplers.graphs import CaptureMode
from hebmctl.schemas.prior import TrainPriorConfig

PRIOR_CLASSES: dict[str, type[EnergyPrior]] = {cls.kind: cls for cls in (JointPrior, DiffusionPrior, CooperativePrior)}
"""Scheme (TrainPriorConfig.scheme) -> prior class."""


def energy_network(config: TrainPriorConfig, group_shapes: Sequence[Sequence[int]]) -> JointEnergy:
    """A fresh energy network of the architecture a train-prior config describes (for loading weights into)."""
    return PRIOR_CLASSES[config.scheme].energy_network(config, group_shapes)


def gaussian(backbone: Backbone, device: torch.device) -> GaussianPrior:
    """The backbone's own N(0, I) prior in u-space."""
    return GaussianPrior(backbone, device)


def from_energy(config: TrainPriorConfig, energy: JointEnergy, backbone: Backbone, device: torch.device,
                options: SamplingOptions = SamplingOptions()) -> EnergyPrior:
    """The prior a train-prior artifact describes (its resolved config and its loaded energy network), with
    the sampler's overrides applied."""
    return PRIOR_CLASSES[config.scheme](config, energy, backbone, device, options)


def load(config: TrainPriorConfig | None, energy: JointEnergy | None, backbone: Backbone, device: torch.device,
         options: SamplingOptions = SamplingOptions()) -> Prior:
    """The Gaussian prior when there is no prior artifact (config None), else `from_energy`."""
    if config is None or energy is None:
        return gaussian(backbone, device)
    return from_energy(config, energy, backbone, device, options)


def for_training(config: TrainPriorConfig, backbone: Backbone, device: torch.device, compile: CaptureMode = "off") -> EnergyPrior:
    """A prior with a freshly initialised energy network (seeded by config.seed, global RNG untouched) and the
    training sampler settings (K = config.langevin_steps, the training step sizes); `compile` as `SamplingOptions`."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        energy = energy_network(config, backbone.group_shapes).to(device)
    return from_energy(config, energy, backbone, device, SamplingOptions(compile=compile))
