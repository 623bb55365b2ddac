"""What the trained (EBM) priors share: the energy network composed with the backbone's u -> z map."""

from __future__ import annotations

import copy
from abc import abstractmethod
from collections.abc import Callable, Sequence
from typing import ClassVar

import torch
from torch import Tensor, nn

from hebmctl.models.backbone import Backbone
from hebmctl.models.energy import JointEnergy
from hebmctl.noise import Noise
from hebmctl.priors.base import Prior, SamplingOptions, TrainingOutcome
from hebmctl.priors.labels import ClassCondition, LabelHeads
from hebmctl.samplers.graphs import step_runner
from hebmctl.samplers.langevin import EAGER
from hebmctl.schemas.prior import DEFAULT_CONV_CHANNELS, DEFAULT_CONV_DEPTH, LabelCoupling, TrainPriorConfig

NegEnergyOnU = Callable[[Tensor, Tensor | None], Tensor]
"""(u `[B, D]`, t `[B]` or None) -> G `[B]`."""


class EnergyPrior(Prior):
    """A prior with an energy network `F(z, t)` (a negative energy, DESIGN §3 "Energy sign") trained by train-prior.
    With a `LabelCoupling` the network outputs F(z, y) per class and the prior's density is the marginal
    (`hebmctl.priors.labels`); `conditioned` gives the prior that samples the coupled level under a class condition."""

    supports_labels: ClassVar[bool] = False
    """Whether train-prior --labels can train this kind (its training step couples the label)."""

    def __init__(self, config: TrainPriorConfig, energy: JointEnergy, backbone: Backbone, device: torch.device,
                 options: SamplingOptions, coupling: LabelCoupling | None = None) -> None:
        n_steps = options.langevin_steps if options.langevin_steps is not None else config.langevin_steps
        super().__init__(backbone, device, n_steps, self.resolve_step(config, n_steps, options))
        self.config, self.energy = config, energy
        self.runner = step_runner(options.compile, device)  # eager, or the Langevin step captured in CUDA graphs
        self.labels = LabelHeads(coupling) if coupling is not None else None
        self.condition: ClassCondition | None = None

    @classmethod
    @abstractmethod
    def resolve_step(cls, config: TrainPriorConfig, n_steps: int, options: SamplingOptions) -> float:
        """The sampler's step setting (joint: s; diffusion: the scale of every s_t) for K = n_steps."""

    @classmethod
    def n_levels(cls, config: TrainPriorConfig) -> int:
        """Levels the energy network is conditioned on (0: none)."""
        return 0

    @classmethod
    def energy_network(cls, config: TrainPriorConfig, group_shapes: Sequence[Sequence[int]],
                       coupling: LabelCoupling | None = None) -> JointEnergy:
        """A freshly initialised energy network with the architecture the config describes
        (an MLP per vector group, a small conv net per spatial group; label heads with `coupling`)."""
        labels = dict(n_classes=coupling.n_outputs, label_groups=coupling.label_groups) if coupling is not None else {}
        return JointEnergy(
            group_shapes=group_shapes, width=config.width, depth=config.depth, activation=config.activation,
            spectral_norm=config.spectral_norm, n_levels=cls.n_levels(config), time_embed_dim=config.time_embed_dim,
            conv_channels=config.conv_channels or DEFAULT_CONV_CHANNELS, conv_depth=config.conv_depth or DEFAULT_CONV_DEPTH, **labels,
        )

    def conditioned(self, condition: ClassCondition) -> "EnergyPrior":
        """This prior with the class condition applied at the coupled level (a shallow copy sharing the networks)."""
        other = copy.copy(self)
        other.condition = condition
        other.runner = EAGER  # a captured step is keyed by its density, which does not see the condition
        return other

    def level_scale(self, t: Tensor | None, like: Tensor) -> Tensor:
        """c `[B]`, the divisor of G in the density at each row's level (joint: 1)."""
        return torch.ones(like.shape[0], device=like.device, dtype=like.dtype)

    def coupled_rows(self, t: Tensor | None, like: Tensor) -> Tensor:
        """`[B]` bool: the rows at the level the label is coupled at (joint: every row)."""
        return torch.ones(like.shape[0], device=like.device, dtype=torch.bool)

    def coupled_levels(self) -> str:
        """Where the label is coupled, in words, for manifests (joint: its one level)."""
        return "every row (one level)"

    def extra_modules(self) -> dict[str, nn.Module]:
        """Trainable networks besides the energy (name -> module; none by default). train-prior gives each its own
        Adam, EMA and checkpoint entries and writes the EMA weights as NAME.safetensors; the artifact loader
        fills them back in. Their losses come in `TrainingOutcome.extra_losses`."""
        return {}

    def neg_energy_on_u(self, u: Tensor, t: Tensor | None = None) -> Tensor:
        """G(u, t) = F(T(u), t): u `[B, D]`, t `[B]` or None -> `[B]` (DESIGN §3 "u-space"); for a labelled energy the
        marginal, or the condition's energy at the coupled rows."""
        return self.labelled_neg_energy(u, t, self.condition)

    def labelled_neg_energy(self, u: Tensor, t: Tensor | None, condition: ClassCondition | None) -> Tensor:
        """G(u, t) `[B]` of u `[B, D]` under `condition` (an unlabelled energy ignores it)."""
        z = self.backbone.u_to_z(u)
        if self.labels is None:
            return self.energy(z, t)
        logits = self.energy.class_logits(z, t)  # F(z, y, t) [B, K]
        return self.labels.neg_energy(logits, self.level_scale(t, u), self.coupled_rows(t, u), condition)

    def label_terms(self, u: Tensor, t: Tensor | None, y: Tensor | None,
                    generator: Noise) -> tuple[NegEnergyOnU, Tensor | None, dict[str, float]]:
        """For a training batch u `[B, D]` at levels t `[B]` with labels y `[B]` (None: unlabelled): the negative energy the
        chains and the loss use (F(z, y) at the coupled rows, F(z, null) where label dropout picks them, the marginal
        elsewhere), the weighted cross-entropy of softmax_y F on the coupled rows (Diff-EBM App. A.2; None without labels)
        and values to log."""
        if self.labels is None or y is None:
            return self.neg_energy_on_u, None, {}
        coupled = self.coupled_rows(t, u)
        condition = self.labels.training_condition(y, generator)
        logits = self.energy.class_logits(self.backbone.u_to_z(u), t)
        ce = self.labels.cross_entropy(logits, self.level_scale(t, u), y, coupled)
        hits = (logits[:, : self.labels.n_classes].argmax(1) == y) & coupled  # [B]
        accuracy = hits.sum() / coupled.sum().clamp(min=1)  # over the coupled rows (0 when there are none); a tensor `[]`
        return (lambda v, level: self.labelled_neg_energy(v, level, condition)), ce, {"label_ce": ce.detach(),
                                                                                      "label_accuracy": accuracy}

    def describe(self, temperature: float, seed: int) -> dict:
        return super().describe(temperature, seed) | {"training_langevin_steps": self.config.langevin_steps}

    def manifest_fields(self) -> dict:
        """The prior manifest's `schedule` and `step_sizes` (the geometry the samplers need besides the network)."""
        return {"schedule": None, "step_sizes": []}

    @abstractmethod
    def training_outcome(self, u0: Tensor, generator: Noise, y: Tensor | None = None) -> TrainingOutcome:
        """Negatives and the EBM loss (without regulariser) on a batch of cached u_0 `[B, D]` (with labels y `[B]` for a
        label-coupled prior: the loss then includes the weighted cross-entropy term).

        Every draw goes through `generator` (with `NoiseRows`, u0 is a shard of the batch and gets its rows of the batch's
        draws), and every loss and statistic is a mean over the rows of per-row terms, so that train-prior can
        combine the shards' means into the whole batch's (several processes, DESIGN §8)."""
