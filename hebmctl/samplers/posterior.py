"""Posterior Langevin in u-space (Joint-EBM §3.2, LEBM; DESIGN §3 "Joint learning", MLE variant).

The posterior of x under a backbone with an EBM prior, written in u-space (z = T(u)):

    log p(u | x) = log p(x | T(u)) + F(T(u)) + log p_Gauss(T(u)) + log|det dT/du| + const
                 = log p(x | T(u)) + F(T(u)) - |u|^2 / 2 + const,

because the Gaussian prior's density in u-space is N(0, I) (the Jacobian term cancels the
log sigma_i of log p_Gauss). Short-run Langevin on it, started from q's draw (`u = T^{-1}(z_q)`) or
from N(0, I), gives the MLE learning's posterior samples. With `neg_energy=None` the prior is the
Gaussian one (F = 0).

Pure functions of (backbone, energy, x, u_init, K, s, generator): no I/O, no global RNG; they call
:func:`hebmctl.samplers.langevin.langevin` (the one update rule).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from hebmctl.models.backbone import Backbone
from hebmctl.samplers.langevin import ChainStats, LogDensity, langevin

__all__ = ["posterior_log_density", "sample_posterior"]

NegEnergy = Callable[[Tensor], Tensor]
"""F: z `[B, D]` -> negative energy `[B]` (an energy network called without a level)."""


def posterior_log_density(backbone: Backbone, neg_energy: NegEnergy | None, x: Tensor, log_std_x: Tensor | None = None) -> LogDensity:
    """u `[B, D]` -> log p(x | T(u)) + F(T(u)) - |u|^2/2 `[B]`, for images x `[B, C, H, W]` in [-1, 1].

    `log_std_x` is the decoder's log std (default: the backbone's stored one); during training the
    caller passes the batch's calibrated value.
    """

    def log_density(u: Tensor) -> Tensor:
        z = backbone.u_to_z(u)
        log_px = -backbone.recon_nll(x, backbone.decode_params(z), log_std_x)
        prior = -0.5 * u.flatten(1).pow(2).sum(dim=1)
        return log_px + prior + (neg_energy(z) if neg_energy is not None else 0.0)

    return log_density


def sample_posterior(
    backbone: Backbone,
    neg_energy: NegEnergy | None,
    x: Tensor,
    u_init: Tensor,
    n_steps: int,
    step_size: float,
    generator: torch.Generator,
    log_std_x: Tensor | None = None,
) -> tuple[Tensor, ChainStats]:
    """K steps of Langevin on log p(u | x) from `u_init` `[B, D]` (anchors: s = 0.1, K = 20..40).

    Returns (u_K `[B, D]` detached, ChainStats); z = backbone.u_to_z(u_K). Parameters' .grad are
    never touched (gradients are taken w.r.t. u only).
    """
    return langevin(posterior_log_density(backbone, neg_energy, x, log_std_x), u_init, n_steps, step_size, generator)
