"""EBM losses (DESIGN §3). Pure functions of negative energies; minimise them w.r.t. the EBM.

Inputs are negative energies ``F`` / ``G`` (log-density terms): positives are evaluated on data
latents (``u_pos`` from the cache, or the forward-diffused ``u_t``), negatives on Langevin samples
(detached: the loss gradient flows through the network only, not through the chain).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F_nn
from torch import Tensor

__all__ = ["joint_ebm_loss", "diffusion_ebm_loss", "label_cross_entropy"]


def _check_pair(pos: Tensor, neg: Tensor) -> None:
    if pos.dim() != 1 or neg.dim() != 1:
        raise ValueError(
            f"negative energies must have shape [B]; got pos {tuple(pos.shape)}, neg {tuple(neg.shape)}"
        )


def joint_ebm_loss(neg_energy_pos: Tensor, neg_energy_neg: Tensor) -> Tensor:
    """Joint-EBM eq. 17 (DESIGN §3, Joint scheme): ``mean F(T(u_neg)) - mean F(T(u_pos))``.

    Args:
        neg_energy_pos: ``F`` on data latents ``[B]``.
        neg_energy_neg: ``F`` on prior Langevin samples ``[B']`` (B' may differ from B).

    Returns:
        Scalar ``[]``.
    """
    _check_pair(neg_energy_pos, neg_energy_neg)
    return neg_energy_neg.mean() - neg_energy_pos.mean()


def diffusion_ebm_loss(neg_energy_pos: Tensor, neg_energy_neg: Tensor, step_size_sq: Tensor) -> Tensor:
    """Diff-EBM eq. 12-13, scaled parametrisation (DESIGN §3, Diffusion scheme).

    ``mean_batch( -(G(u_t^pos, t) - G(u_t^neg, t)) / s_t^2 )`` with each example's own level t.

    Args:
        neg_energy_pos: ``G(T(u_t), t)`` on forward-diffused data ``[B]``.
        neg_energy_neg: ``G(T(u_t^neg), t)`` on the Langevin samples of ``p(u_t | u_{t+1})`` ``[B]``.
        step_size_sq: ``s_t^2`` gathered per example ``[B]``.

    Returns:
        Scalar ``[]``.
    """
    _check_pair(neg_energy_pos, neg_energy_neg)
    if not (neg_energy_pos.shape == neg_energy_neg.shape == step_size_sq.shape):
        raise ValueError(
            "pos, neg and step_size_sq must all have shape [B]; got "
            f"{tuple(neg_energy_pos.shape)}, {tuple(neg_energy_neg.shape)}, {tuple(step_size_sq.shape)}"
        )
    s_sq = step_size_sq.to(device=neg_energy_pos.device, dtype=neg_energy_pos.dtype)
    return (-(neg_energy_pos - neg_energy_neg) / s_sq).mean()


def label_cross_entropy(class_logits: Tensor, y: Tensor) -> Tensor:
    """Cross-entropy of ``softmax_y F(z, y)`` (DESIGN "Labels"): class_logits ``[B, C]``, y ``[B]`` -> ``[]``."""
    return F_nn.cross_entropy(class_logits, y.to(device=class_logits.device, dtype=torch.long))
