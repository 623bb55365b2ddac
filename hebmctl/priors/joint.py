"""Joint-EBM prior in u-space (DESIGN §3 "Joint scheme"): log p(u) = F(T(u)) - |u|^2/2, Langevin from N(0, I)."""

from __future__ import annotations

import torch
from torch import Tensor

from hebmctl.models.ebm_losses import joint_ebm_loss
from hebmctl.noise import Noise, randn
from hebmctl.priors.base import NegEnergyOfZ, SamplingOptions, TrainingOutcome, Trajectory
from hebmctl.priors.energy_prior import EnergyPrior
from hebmctl.samplers import ChainStats, joint_prior_log_density, sample_joint_prior
from hebmctl.samplers.conditional import resample_masked_joint
from hebmctl.schemas.prior import TrainPriorConfig

TRAJECTORY_ROWS = 4


class JointPrior(EnergyPrior):
    kind = "joint"
    energy_in_score = "F(z)"
    supports_labels = True  # one level: the label couples at every row (Joint-EBM has no diffusion levels)

    @classmethod
    def resolve_step(cls, config: TrainPriorConfig, n_steps: int, options: SamplingOptions) -> float:
        return options.step_size or config.step_size

    def _neg_energy(self, u: Tensor) -> Tensor:
        return self.neg_energy_on_u(u, None)

    def from_noise(self, u_top: Tensor, generator: torch.Generator) -> tuple[Tensor, list[ChainStats]]:
        """K Langevin steps of log p(u) from u_top (Joint-EBM short run)."""
        u0, stats = sample_joint_prior(self._neg_energy, u_top, self.n_steps, self.step_size, generator, runner=self.runner)
        return u0, [stats]

    def resample_masked(self, u_fixed: Tensor, mask: Tensor, generator: torch.Generator) -> Tensor:
        return resample_masked_joint(self._neg_energy, u_fixed, mask, self.n_steps, self.step_size, generator)[0]

    def neg_energy_of_z(self) -> NegEnergyOfZ:
        """F(z) `[B]`; for a labelled energy the marginal logsumexp_y F(z, y) over the real classes."""
        if self.labels is not None:
            return lambda z: self.labels.marginal(self.energy.class_logits(z, None), torch.ones(z.shape[0], device=z.device))
        return lambda z: self.energy(z, None)

    def describe(self, temperature: float, seed: int) -> dict:
        return super().describe(temperature, seed) | {"step_size": self.step_size}

    def manifest_fields(self) -> dict:
        return {"schedule": None, "step_sizes": [float(s) for s in torch.tensor([self.config.step_size**2]).sqrt()]}

    def trajectory(self, u_top: Tensor, generator: torch.Generator) -> Trajectory:
        """The chain in TRAJECTORY_ROWS chunks of K / TRAJECTORY_ROWS steps; the long run continues it."""
        rows, u = [u_top], u_top
        chunk = max(1, self.n_steps // TRAJECTORY_ROWS)
        for _ in range(TRAJECTORY_ROWS):
            u, _ = sample_joint_prior(self._neg_energy, u, chunk, self.step_size, generator)
            rows.append(u)
        return Trajectory(rows, u, joint_prior_log_density(self._neg_energy), self._neg_energy, self.step_size)

    def training_outcome(self, u0: Tensor, generator: Noise, y: Tensor | None = None) -> TrainingOutcome:
        """Negatives: K Langevin steps from N(0, I); loss mean F(T(u_neg)) - mean F(T(u_pos)) (Joint-EBM eq. 17).
        With labels y `[B]`: F is the marginal logsumexp_y F(z, y) (F(z, null) on the rows label dropout picks; row i's
        chain targets row i's energy) and the loss adds the weighted cross-entropy of softmax_y F(z_pos, y)."""
        u_init = randn(u0.shape, generator, self.device)
        neg_energy, ce, records = self.label_terms(u0, None, y, generator)
        u_neg, stats = sample_joint_prior(lambda u: neg_energy(u, None), u_init, self.n_steps, self.step_size, generator,
                                          runner=self.runner)
        pos, neg = neg_energy(u0, None), neg_energy(u_neg, None)
        loss = joint_ebm_loss(pos, neg)
        gap = pos.detach().mean() - neg.detach().mean()  # mean F(z+) - mean F(z-), left on the device
        return TrainingOutcome(loss if ce is None else loss + ce, pos, neg, stats, gap, records=records)
