"""What every prior kind offers (DESIGN §2 "priors/", §3): sampling, masked sampling, the score's
energy term, a description for manifests, and (for trained priors) one training loss.

All sampling happens in u-space: a prior draws u_0 `[B, D]`; the caller maps z = T(tau * u_0).
Randomness only through the caller's `torch.Generator`, in a fixed order, so that a seed gives the
same samples whatever prior object wraps the networks.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import ClassVar

import torch
from torch import Tensor

from hebmctl.errors import ConfigError
from hebmctl.metrics.likelihood import SCORE_TERMS, PosteriorRefiner, likelihood_detection_scores
from hebmctl.models.backbone import Backbone
from hebmctl.priors.labels import ClassCondition, LabelHeads
from hebmctl.samplers import ChainStats, LogDensity
from hebmctl.samplers.graphs import CaptureMode
from hebmctl.samplers.posterior import sample_posterior

NegEnergyOfZ = Callable[[Tensor], Tensor]
"""z `[B, D]` -> the score's energy term `[B]`."""


@dataclass(frozen=True)
class SamplingOptions:
    """Overrides of the prior's training values (None = keep the training value), and how the Langevin steps run
    (`compile`: CUDA-graph capture, `hebmctl.samplers.graphs.step_runner`; the same numbers either way)."""

    langevin_steps: int | None = None
    step_size: float | None = None  # joint: s
    step_scale: float | None = None  # diffusion: multiplies every s_t
    compile: CaptureMode = "off"


@dataclass(frozen=True)
class PosteriorLangevin:
    """Posterior samples for the scores by short-run Langevin from q's draw (Joint-EBM §3.2; anchors s = 0.1, K = 20-40)."""

    n_steps: int
    step_size: float


@dataclass(frozen=True)
class TrainingOutcome:
    """One batch of the EBM loss: loss `[]`, negative energies on positives and negatives `[B]`, the chain's
    statistics, and `gap` `[]`, the positive-negative gap in the units the loss uses (the runaway guard's quantity).
    `extra_losses`: the losses `[]` of the prior's extra trainable modules (`EnergyPrior.extra_modules`), by module
    name; each is minimised by that module's own optimizer (the trainer adds them to the backward pass). `records`: values
    for metrics.jsonl (a label-coupled prior's cross-entropy, which `loss` already includes, and its batch accuracy).
    `gap` and `records` stay tensors on the device: the trainer reads every number of an update in one transfer."""

    loss: Tensor
    pos: Tensor
    neg: Tensor
    stats: ChainStats
    gap: Tensor
    extra_losses: dict[str, Tensor] = field(default_factory=dict)
    records: dict[str, Tensor] = field(default_factory=dict)  # further values `[]` to log (e.g. the label cross-entropy)


@dataclass(frozen=True)
class Trajectory:
    """`sample --trajectory`: the chain's states to show (`rows`, each `[B, D]`), its end state u_end
    `[B, D]`, and the long run's target: `log_density` (u -> `[B]`), `profile_energy` (u -> the negative
    energy recorded along it, `[B]`) and the Langevin `step`."""

    rows: list[Tensor]
    u_end: Tensor
    log_density: LogDensity
    profile_energy: Callable[[Tensor], Tensor]
    step: float


class Prior(ABC):
    """A prior over u `[B, D]` on a frozen backbone (`backbone`, the model)."""

    kind: ClassVar[str]
    energy_in_score: ClassVar[str] = "none"
    labels: LabelHeads | None = None  # the label coupling of a prior trained with --labels (`EnergyPrior`)

    def __init__(self, backbone: Backbone, device: torch.device, n_steps: int = 0, step_size: float = 0.0) -> None:
        self.backbone, self.device = backbone, device
        self.n_steps = n_steps  # K per chain (per level for diffusion)
        self.step_size = step_size  # joint: s; diffusion: the scale applied to every s_t

    def draw(self, n: int, generator: torch.Generator) -> tuple[Tensor, list[ChainStats]]:
        """u_0 `[n, D]` and the chain statistics (one per diffusion level, one for joint, none for Gaussian).
        The first draw is always u_top ~ N(0, I) `[n, D]`, the chains' start."""
        u_top = torch.randn((n, self.backbone.latent_dim), generator=generator, device=self.device)
        return self.from_noise(u_top, generator)

    @abstractmethod
    def from_noise(self, u_top: Tensor, generator: torch.Generator) -> tuple[Tensor, list[ChainStats]]:
        """u_0 `[B, D]` from the chains' start u_top `[B, D]` ~ N(0, I)."""

    @abstractmethod
    def resample_masked(self, u_fixed: Tensor, mask: Tensor, generator: torch.Generator) -> Tensor:
        """u `[B, D]` with the coordinates where mask `[D]` is 1 redrawn from p(u_free | u_fixed), the rest exactly u_fixed."""

    def neg_energy_of_z(self) -> NegEnergyOfZ | None:
        """F(z), the energy term of the likelihood scores L^{>k} (DESIGN §3 "Scores"): log p(z) = log p_Gauss(z) + F(z)
        up to the normaliser; None for the Gaussian prior."""
        return None

    def detection_scores(self, x: Tensor, ks: tuple[int, ...], generator: torch.Generator, draws: int = 1,
                         terms: tuple[str, ...] = SCORE_TERMS, posterior: PosteriorLangevin | None = None) -> dict[str, Tensor]:
        """Detection scores `[B]` (higher = more anomalous) of images x `[B, C, H, W]` in [-1, 1], by name:
        the likelihood scores `-L>k`, `LLR>k` (full terms, Joint-EBM eq. 20-21) and `-Lprior>k` (the prior's terms),
        z_{<=k} redrawn by `resample_masked` (`hebmctl.metrics.likelihood.likelihood_detection_scores`); with
        `posterior`, each posterior draw is refined by posterior Langevin (`posterior_refiner`)."""
        return likelihood_detection_scores(self.backbone, x, ks, self.neg_energy_of_z(), self.resample_masked, generator, draws, terms,
                                           self.posterior_refiner(x, posterior))

    def posterior_refiner(self, x: Tensor, posterior: PosteriorLangevin | None) -> PosteriorRefiner | None:
        """u_q `[B, D]` -> K steps of posterior Langevin on log p(x | T(u)) + F(T(u)) - |u|^2/2 from u_q (Joint-EBM
        §3.2, LEBM; `hebmctl.samplers.posterior`), F = this prior's `neg_energy_of_z` (0 where it has none: the
        Gaussian prior, and the diffusion prior, which has no marginal energy); None without `posterior`."""
        if posterior is None:
            return None
        neg_energy = self.neg_energy_of_z()
        return lambda u_q, generator: sample_posterior(self.backbone, neg_energy, x, u_q, posterior.n_steps, posterior.step_size,
                                                       generator)[0]

    def conditioned(self, condition: ClassCondition) -> Prior:
        """This prior sampling under a class condition at its coupled level; only label-coupled priors have one."""
        raise ConfigError(f"The {self.kind} prior has no class labels; train one with train-prior --labels.")

    def describe(self, temperature: float, seed: int) -> dict:
        """Every number of the sampler, for manifests."""
        return {"kind": self.kind, "temperature": temperature, "seed": seed, "langevin_steps": self.n_steps}

    def trajectory(self, u_top: Tensor, generator: torch.Generator) -> Trajectory | None:
        """The chain from u_top `[B, D]` with its intermediate states, and the long run's target; None without an EBM."""
        return None
