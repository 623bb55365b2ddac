"""CDRL's cooperative scheme in u-space (DESIGN §3 "Cooperative scheme"): the diffusion scheme's conditional EBMs
log p(u_t | u_{t+1}) (same energy network, level embedding, step sizes and recovery-likelihood loss), plus an
initializer network g(u_{t+1}, t) (`hebmctl.models.initializer`) that proposes each chain's start, so that
few Langevin steps suffice.

Per level t (CDRL sec. 3.2, Alg. 1):
- proposal u_init = g(u_{t+1}, t) + sqrt(beta~_t) eps with the schedule's posterior variance
  beta~_t = sigma_cum[t]^2 sigma[t+1]^2 / sigma_cum[t+1]^2 (the variance of q(u_t | u_{t+1}, u_0));
- K Langevin steps of log p(u_t | u_{t+1}) from u_init refine it to u_K;
- the EBM takes the recovery-likelihood gradient on (u_t, u_K) (Diff-EBM eq. 12-13 / CDRL eq. 5);
- the initializer regresses on the refined sample: mean |sg(u_K) - g(u_{t+1}, t)|^2 (CDRL eq. 7).
Sampling runs the same reverse diffusion with the initializer's proposals; `--langevin-steps K'` scales
every step by sqrt(K / K') (CDRL sec. 3.4), inherited from the diffusion prior.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from hebmctl.models.backbone import Backbone
from hebmctl.models.ebm_losses import diffusion_ebm_loss
from hebmctl.models.energy import JointEnergy
from hebmctl.models.initializer import Initializer
from hebmctl.noise import Noise, randint, randn
from hebmctl.priors.base import SamplingOptions, TrainingOutcome, Trajectory
from hebmctl.priors.diffusion import DiffusionPrior, scaled_gap
from hebmctl.samplers import (
    ChainStats,
    conditional_log_density,
    forward_pairs,
    forward_pairs_shared_noise,
    langevin,
    reverse_diffusion_sample,
)
from hebmctl.schemas.prior import DEFAULT_CONV_CHANNELS, DEFAULT_CONV_DEPTH, TrainPriorConfig

INITIALIZER_NAME = "initializer"
DEFAULT_SHARED_NOISE, DEFAULT_TWEEDIE = True, False
"""Shared noise on (CDRL's choice: lower-variance recovery-likelihood gradients); the Tweedie step off (on the u-space
diffusion the level-0 noise sigma_cum[0] is already ~1e-2 or smaller, and the step adds the raw EBM gradient)."""


class CooperativePrior(DiffusionPrior):
    kind = "cooperative"

    def __init__(self, config: TrainPriorConfig, energy: JointEnergy, backbone: Backbone, device: torch.device,
                 options: SamplingOptions) -> None:
        super().__init__(config, energy, backbone, device, options)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed + 1)  # its own seed: the energy's initial weights stay those of the diffusion scheme
            self.initializer = Initializer(backbone.group_shapes, width=config.width, depth=config.depth,
                                           conv_channels=config.conv_channels or DEFAULT_CONV_CHANNELS,
                                           conv_depth=config.conv_depth or DEFAULT_CONV_DEPTH,
                                           time_embed_dim=config.time_embed_dim, activation=config.activation).to(device)
        s = self.schedule
        # beta~_t = sigma_cum[t]^2 sigma[t+1]^2 / sigma_cum[t+1]^2, t = 0..T-1: q(u_t | u_{t+1}, u_0)'s variance  [T]
        self.proposal_std = (s.sigma_cum[:-1] ** 2 * s.sigma[1:] ** 2 / s.sigma_cum[1:] ** 2).sqrt().to(device)
        self.shared_noise = DEFAULT_SHARED_NOISE if config.shared_noise is None else config.shared_noise
        self.tweedie = DEFAULT_TWEEDIE if config.tweedie is None else config.tweedie

    def extra_modules(self) -> dict[str, nn.Module]:
        return {INITIALIZER_NAME: self.initializer}

    def propose(self, u_next: Tensor, t: Tensor, generator: Noise) -> tuple[Tensor, Tensor]:
        """(mean g(u_{t+1}, t), u_init = mean + sqrt(beta~_t) eps), both `[B, D]`, for u_{t+1} `[B, D]` and t `[B]`."""
        mean = self.initializer(u_next, t)
        eps = randn(u_next.shape, generator, u_next.device, u_next.dtype)
        return mean, mean.detach() + self.proposal_std[t][:, None] * eps

    def _initializer(self, u_next: Tensor, t: Tensor, generator: torch.Generator) -> Tensor:
        with torch.no_grad():
            return self.propose(u_next, t, generator)[1]

    def from_noise(self, u_top: Tensor, generator: torch.Generator) -> tuple[Tensor, list[ChainStats]]:
        """Reverse diffusion u_T = u_top -> u_0 with the initializer's proposal at each level, then K Langevin steps
        (K' with the sqrt(K / K') step adjustment); optionally the noiseless Tweedie step at t = 0."""
        u0, stats, levels = self._reverse(u_top, generator)
        if self.tweedie:
            u0 = self.tweedie_step(u0, levels[-2])
        return u0, stats

    def _reverse(self, u_top: Tensor, generator: torch.Generator) -> tuple[Tensor, list[ChainStats], list[Tensor]]:
        """(u_0 `[B, D]`, stats per level, [u_T, ..., u_0]) of the reverse diffusion with the initializer's proposals."""
        return reverse_diffusion_sample(self.neg_energy_on_u, u_top, self.schedule, self.step_sizes_sq, self.n_steps, generator,
                                        step_scale=self.step_size, return_trajectory=True, initializer=self._initializer,
                                        runner=self.runner)

    def trajectory(self, u_top: Tensor, generator: torch.Generator) -> Trajectory:
        """As the diffusion prior's (rows u_T, ..., u_0; the long run continues the t = 0 chain given u_1), with the
        initializer's proposals."""
        u0, _, levels = self._reverse(u_top, generator)
        log_density = conditional_log_density(self.neg_energy_on_u, levels[-2], self._levels(0, u0), self.schedule, self.step_sizes_sq)
        step = float(self.step_sizes_sq[0].sqrt()) * self.step_size
        return Trajectory(levels, u0, log_density, lambda u: self.neg_energy_on_u(u, self._levels(0, u)), step)

    def tweedie_step(self, u0: Tensor, u1: Tensor) -> Tensor:
        """CDRL's final denoising: u_0 + sigma_cum[0]^2 grad log p(u_0 | u_1) (no noise); u0, u1 `[B, D]`."""
        log_p = conditional_log_density(self.neg_energy_on_u, u1, self._levels(0, u0), self.schedule, self.step_sizes_sq)
        with torch.enable_grad():
            u = u0.detach().requires_grad_(True)
            grad = torch.autograd.grad(log_p(u).sum(), u)[0]
        return (u0 + self.schedule.sigma_cum[0].to(u0.dtype) ** 2 * grad).detach()

    def describe(self, temperature: float, seed: int) -> dict:
        return super().describe(temperature, seed) | {"initializer": True, "tweedie": self.tweedie}

    supports_labels = False  # the initializer g(u_{t+1}, t) is unconditional; --labels is refused before compute

    def training_outcome(self, u0: Tensor, generator: Noise, y: Tensor | None = None) -> TrainingOutcome:
        """t ~ U{0..T-1}; (u_t, u_{t+1}) with shared noise (or the forward kernel); u_init from the initializer;
        K Langevin steps of log p(u_t | u_{t+1}) from u_init; EBM loss mean(-(G(pos, t) - G(neg, t)) / s_t^2) as the
        diffusion scheme; initializer loss mean |sg(u_K) - g(u_{t+1}, t)|^2 over the batch and coordinates (CDRL eq. 7)."""
        t = randint(self.config.T, (u0.shape[0],), generator, self.device)
        pairs = forward_pairs_shared_noise if self.shared_noise else forward_pairs
        u_t, u_tp1 = pairs(u0, t, self.schedule, generator)
        mean, u_init = self.propose(u_tp1, t, generator)
        log_p = conditional_log_density(self.neg_energy_on_u, u_tp1, t, self.schedule, self.step_sizes_sq)
        s_sq = self.step_sizes_sq[t]
        u_neg, stats = langevin(log_p, u_init, self.n_steps, s_sq.sqrt(), generator, runner=self.runner)
        u_neg = u_neg.detach()
        pos, neg = self.neg_energy_on_u(u_t, t), self.neg_energy_on_u(u_neg, t)
        init_loss = (u_neg - mean).pow(2).mean()
        return TrainingOutcome(diffusion_ebm_loss(pos, neg, s_sq), pos, neg, stats, scaled_gap(pos, neg, s_sq),
                               extra_losses={INITIALIZER_NAME: init_loss})
