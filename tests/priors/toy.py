"""A 2-D toy in u-space with a known density: a mixture of 8 Gaussians on a circle, and an identity
"backbone" (T = identity, so z = u and every prior acts on the toy directly)."""

from __future__ import annotations

import math

import torch
from torch import Tensor

N_MODES, RADIUS, MODE_STD = 8, 2.0, 0.15


class IdentityBackbone:
    """The part of the Backbone interface the priors use, with T = identity on one 2-D vector group."""

    latent_dim = 2
    group_shapes = ((2,),)

    def u_to_z(self, u: Tensor) -> Tensor:
        return u


def mixture(n: int, g: torch.Generator) -> Tensor:
    """n draws `[n, 2]` of the target."""
    idx = torch.randint(0, N_MODES, (n,), generator=g)
    ang = 2 * math.pi * idx.float() / N_MODES
    centres = RADIUS * torch.stack([torch.cos(ang), torch.sin(ang)], 1)
    return centres + MODE_STD * torch.randn(n, 2, generator=g)


def mmd_rbf(x: Tensor, y: Tensor, bandwidths=(0.2, 0.5, 1.0, 2.0)) -> float:
    """Biased MMD^2 with a sum of RBF kernels; x `[N, D]`, y `[M, D]`."""
    dxx, dyy, dxy = torch.cdist(x, x) ** 2, torch.cdist(y, y) ** 2, torch.cdist(x, y) ** 2
    total = 0.0
    for bw in bandwidths:
        total += float(sum(sign * torch.exp(-d / (2 * bw * bw)).mean() for sign, d in ((1, dxx), (1, dyy), (-2, dxy))))
    return total
