"""Prior objects (DESIGN §2 "priors/"): one class per prior kind, built by one factory.

Each prior samples u_0, resamples masked coordinates, gives the score's energy term and describes
itself for manifests; trained kinds also give one training loss. Dependency direction: stages ->
priors -> (models, samplers); never imports stages or io.
"""

from hebmctl.priors.base import NegEnergyOfZ, PosteriorLangevin, Prior, SamplingOptions, TrainingOutcome, Trajectory
from hebmctl.priors.cooperative import CooperativePrior
from hebmctl.priors.diffusion import DiffusionPrior
from hebmctl.priors.energy_prior import EnergyPrior
from hebmctl.priors.factory import PRIOR_CLASSES, check_labels_supported, energy_network, for_training, from_energy, gaussian, load
from hebmctl.priors.gaussian import GaussianPrior
from hebmctl.priors.generation import SampleBatch, sample_batches
from hebmctl.priors.joint import JointPrior
from hebmctl.priors.labels import MARGINAL, ClassCondition, LabelHeads, class_set_table

__all__ = [
    "MARGINAL",
    "PRIOR_CLASSES",
    "ClassCondition",
    "LabelHeads",
    "CooperativePrior",
    "DiffusionPrior",
    "EnergyPrior",
    "GaussianPrior",
    "JointPrior",
    "NegEnergyOfZ",
    "PosteriorLangevin",
    "Prior",
    "SampleBatch",
    "SamplingOptions",
    "TrainingOutcome",
    "Trajectory",
    "check_labels_supported",
    "class_set_table",
    "energy_network",
    "for_training",
    "from_energy",
    "gaussian",
    "load",
    "sample_batches",
]
