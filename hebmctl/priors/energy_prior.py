"""What the trained (EBM) priors share: the energy network composed with the backbone's u -> z map."""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from hebmctl.models.backbone import Backbone
from hebmctl.models.energy import JointEnergy
from hebmctl.noise import Noise
from hebmctl.priors.base import Prior, SamplingOptions, TrainingOutcome
from hebmctl.samplers.graphs import step_runner
from hebmctl.schemas.prior import DEFAULT_CONV_CHANNELS, DEFAULT_CONV_DEPTH, TrainPriorConfig


class EnergyPrior(Prior):
    """A prior with an energy network `F(z, t)` (a negative energy, DESIGN §3 "Energy sign") trained by train-prior."""

    def __init__(self, config: TrainPriorConfig, energy: JointEnergy, backbone: Backbone, device: torch.device,
                 options: SamplingOptions) -> None:
        n_steps = options.langevin_steps if options.langevin_steps is not None else config.langevin_steps
        super().__init__(backbone, device, n_steps, self.resolve_step(config, n_steps, options))
        self.config, self.energy = config, energy
        self.runner = step_runner(options.compile, device)  # eager, or the Langevin step captured in CUDA graphs

    @classmethod
    @abstractmethod
    def resolve_step(cls, config: TrainPriorConfig, n_steps: int, options: SamplingOptions) -> float:
        """The sampler's step setting (joint: s; diffusion: the scale of every s_t) for K = n_steps."""

    @classmethod
    def n_levels(cls, config: TrainPriorConfig) -> int:
        """Levels the energy network is conditioned on (0: none)."""
        return 0

    @classmethod
    def energy_network(cls, config: TrainPriorConfig, group_shapes: Sequence[Sequence[int]]) -> JointEnergy:
        """A freshly initialised energy network with the architecture the config describes
        (an MLP per vector group, a small conv net per spatial group)."""
        return JointEnergy(
            group_shapes=group_shapes, width=config.width, depth=config.depth, activation=config.activation,
            spectral_norm=config.spectral_norm, n_levels=cls.n_levels(config), time_embed_dim=config.time_embed_dim,
            conv_channels=config.conv_channels or DEFAULT_CONV_CHANNELS, conv_depth=config.conv_depth or DEFAULT_CONV_DEPTH,
        )

    def extra_modules(self) -> dict[str, nn.Module]:
        """Trainable networks besides the energy (name -> module; none by default). train-prior gives each its own
        Adam, EMA and checkpoint entries and writes the EMA weights as NAME.safetensors; the artifact loader
        fills them back in. Their losses come in `TrainingOutcome.extra_losses`."""
        return {}

    def neg_energy_on_u(self, u: Tensor, t: Tensor | None = None) -> Tensor:
        """G(u, t) = F(T(u), t): u `[B, D]`, t `[B]` or None -> `[B]` (DESIGN §3 "u-space")."""
        return self.energy(self.backbone.u_to_z(u), t)

    def describe(self, temperature: float, seed: int) -> dict:
        return super().describe(temperature, seed) | {"training_langevin_steps": self.config.langevin_steps}

    def manifest_fields(self) -> dict:
        """The prior manifest's `schedule` and `step_sizes` (the geometry the samplers need besides the network)."""
        return {"schedule": None, "step_sizes": []}

    @abstractmethod
    def training_outcome(self, u0: Tensor, generator: Noise) -> TrainingOutcome:
        """Negatives and the EBM loss (without regulariser) on a batch of cached u_0 `[B, D]`.

        Every draw goes through `generator` (with `NoiseRows`, u0 is a shard of the batch and gets its rows of the batch's
        draws), and every loss and statistic is a mean over the rows of per-row terms, so that train-prior can
        combine the shards' means into the whole batch's (several processes, DESIGN §8)."""
