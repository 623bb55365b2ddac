"""The backbone's own prior: u ~ N(0, I) (DESIGN §3 "u-space")."""

from __future__ import annotations

import torch
from torch import Tensor

from hebmctl.priors.base import Prior
from hebmctl.samplers import ChainStats


class GaussianPrior(Prior):
    kind = "gaussian"

    def from_noise(self, u_top: Tensor, generator: torch.Generator) -> tuple[Tensor, list[ChainStats]]:
        return u_top, []

    def resample_masked(self, u_fixed: Tensor, mask: Tensor, generator: torch.Generator) -> Tensor:
        """The free coordinates are fresh N(0, I) draws (the Gaussian prior factorises in u)."""
        return u_fixed * (1 - mask) + torch.randn(u_fixed.shape, generator=generator, device=self.device) * mask
