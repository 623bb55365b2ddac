"""The one backbone interface (DESIGN §3 "One backbone interface").

Every family (`hvae`, `nvae`, `vlae`) is a `Backbone`: stages, priors, samplers and evaluations
use only the methods below and never ask which family they hold.

Latents. Groups z_1 (bottom) ... z_L (top); a group is a vector `[d]` or a spatial map `[c, h, w]`
(`group_shapes`). Outside the backbone every latent is flattened and concatenated bottom to top:
`[B, D]`, `D = sum(group_dims)`, `group_dims[i] = prod(group_shapes[i])`.

Generative model. `p_Gauss(z) = p(z_L) prod_{i<L} p(z_i | z_{>i})` with Gaussian conditionals
(an architectural hierarchy has `mu = 0, sigma = 1`), and `p(x | z)` the backbone's `likelihood`
(`hebmctl.models.likelihood`): by default a Gaussian on the [-1, 1] pixel scale with one shared std
`s_x` calibrated in closed form (the maximum-likelihood scale of a Gaussian with one shared variance
is the per-pixel MSE; Rybkin et al. 2021, sigma-VAE), or a discretised logistic mixture. The decoder
outputs the likelihood's parameters (`decode_params`); `decode` is the likelihood's mean image.
Training uses the batch's calibrated std; the stored value (`log_std_x`, a buffer) is set from the
training set when the backbone is finalised (the mixture, with its own scales, ignores it).

u-space. `T: u -> z` is top-down, `z_i = mu_i(z_{>i}) + sigma_i(z_{>i}) * u_i`, and `T^{-1}` its exact
inverse; under the Gaussian prior `u ~ N(0, I)`, so
`log p_Gauss(z) = log N(T^{-1}(z); 0, I) - log|det dT/du|` with `log|det dT/du| = sum_i sum log sigma_i`.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from hebmctl.models.likelihood import GaussianLikelihood, Likelihood
from hebmctl.noise import NoiseRows, randn

MIN_STD = 1e-2
"""Floor of every prior standard deviation. T^{-1} divides by sigma, so float32 rounding of z
(about 6e-8 * |z|) comes back as an error of about 6e-8 * |z| / sigma in u: the floor keeps the
round trip within 1e-5 for the latent scales a trained backbone has."""

HALF_DTYPES = (torch.bfloat16, torch.float16)
"""Dtypes an autocast region produces; the KL and the likelihood compute in float32 instead."""

LOG_STD_X_RANGE = (math.log(0.01), math.log(1.0))
"""Allowed range of the decoder's log std on the [-1, 1] pixel scale."""

Features = Any
"""What `encode` returns and `posterior_from_features` reads: a tensor, or a list of tensors whose
first axis is the batch (the family decides)."""


class BackboneMisfit(ValueError):
    """A backbone configuration that cannot be built for the given image shape."""


@dataclass(frozen=True)
class ElboTerms:
    """Per-example terms of the negative ELBO: recon_nll `[B]` (nats), kl `[B, L]` (nats per layer), x_mean `[B, C, H, W]`,
    and the decoder's likelihood parameters `[B, P, H, W]` (None where a caller rebuilt the terms without them)."""

    recon_nll: Tensor
    kl: Tensor
    x_mean: Tensor
    params: Tensor | None = None


def gaussian_log_prob(x: Tensor, mu: Tensor, std: Tensor) -> Tensor:
    """log N(x; mu, std^2) summed over every axis but the first: `[B, ...]` -> `[B]`."""
    return (-0.5 * ((x - mu) / std) ** 2 - torch.log(std) - 0.5 * math.log(2 * math.pi)).flatten(1).sum(-1)


def gaussian_kl(mu_q: Tensor, std_q: Tensor, mu_p: Tensor, std_p: Tensor) -> Tensor:
    """KL(N(mu_q, std_q^2) || N(mu_p, std_p^2)) summed over every axis but the first: `[B, ...]` -> `[B]` (in float32 at least,
    also when the inputs come from a bfloat16 autocast region)."""
    mu_q, std_q, mu_p, std_p = (t.float() if t.dtype in HALF_DTYPES else t for t in (mu_q, std_q, mu_p, std_p))
    var_ratio = (std_q / std_p) ** 2
    return (0.5 * (var_ratio + ((mu_q - mu_p) / std_p) ** 2 - 1 - torch.log(var_ratio))).flatten(1).sum(-1)


def draw_gaussian(mu: Tensor, std: Tensor, generator: torch.Generator | NoiseRows | None, sample: bool) -> Tensor:
    """mu + std * eps with eps from `generator` (or mu itself when `sample` is False); mu, std `[B, ...]`."""
    if not sample:
        return mu
    return mu + std * randn(mu.shape, generator, mu.device, mu.dtype)  # NoiseRows: this shard's rows of the whole batch's draw


class Backbone(nn.Module, ABC):
    """A hierarchical VAE with the interface every stage uses; see the module docstring.

    Subclasses set `image_shape` (H, W, C) and `group_shapes`, give their decoder
    `likelihood.param_channels(C)` output channels, and implement `encode`, `posterior_from_features`,
    `decode_params`, `u_to_z`, `z_to_u` and `log_prior_gauss`.
    """

    family: str = ""
    image_shape: tuple[int, int, int]
    group_shapes: tuple[tuple[int, ...], ...]

    def __init__(self, likelihood: Likelihood | None = None) -> None:
        super().__init__()
        self.likelihood = likelihood or GaussianLikelihood()
        self.register_buffer("log_std_x", torch.zeros(()))

    # ---- latent bookkeeping -------------------------------------------------------------
    @property
    def group_dims(self) -> tuple[int, ...]:
        """Flattened size of each group, bottom to top."""
        return tuple(math.prod(shape) for shape in self.group_shapes)

    @property
    def latent_dim(self) -> int:
        return sum(self.group_dims)

    @property
    def num_layers(self) -> int:
        return len(self.group_shapes)

    def split_groups(self, v: Tensor) -> list[Tensor]:
        """`[..., D]` -> list of flat `[..., d_i]`, bottom group first."""
        return list(torch.split(v, list(self.group_dims), dim=-1))

    def join_groups(self, groups: list[Tensor]) -> Tensor:
        """List of flat `[B, d_i]` (bottom first) -> `[B, D]`."""
        return torch.cat(groups, dim=-1)

    def group_maps(self, v: Tensor) -> list[Tensor]:
        """`[B, D]` -> list of `[B, *group_shapes[i]]`, bottom group first."""
        return [g.reshape(g.shape[0], *shape) for g, shape in zip(self.split_groups(v), self.group_shapes)]

    def flatten_groups(self, maps: list[Tensor]) -> Tensor:
        """Inverse of `group_maps`: list of `[B, *shape_i]` -> `[B, D]`."""
        return torch.cat([m.flatten(1) for m in maps], dim=-1)

    def layer_mask(self, layers: set[int] | range, device: torch.device) -> Tensor:
        """`[D]` 0/1 mask with 1 on the coordinates of the given 0-based layers."""
        return torch.cat([torch.full((d,), float(i in layers), device=device) for i, d in enumerate(self.group_dims)])

    def latent_footprint_mask(self, pixel_mask: Tensor) -> Tensor:
        """Pixel mask `[H, W]` (1 = pixel to fill) -> latent mask `[D]`: 1 where a latent's footprint overlaps a masked pixel.

        The footprint of position (i, j) of a spatial group `[c, h, w]` is the pixel block its up-sampling covers,
        rows [floor(i H / h), ceil((i + 1) H / h)) and likewise columns (adaptive max-pooling of the pixel mask to
        (h, w); every channel of the position shares it). A vector group `[d]` has no spatial map: its footprint is
        the whole image, so it is free as soon as any pixel is masked. The decoder's convolutions spread each latent
        a little beyond its block; the block is the nominal footprint (docs/decisions.md "Latent inpainting").
        """
        mask = (pixel_mask > 0).to(torch.float32)[None, None]  # [1, 1, H, W]
        parts = []
        for shape in self.group_shapes:
            if len(shape) == 3:
                pooled = torch.nn.functional.adaptive_max_pool2d(mask, shape[1:])[0]  # [1, h, w]
                parts.append(pooled.expand(shape[0], -1, -1).flatten())
            else:
                parts.append(mask.amax().expand(math.prod(shape)))
        return torch.cat(parts)

    # ---- inference ----------------------------------------------------------------------
    @abstractmethod
    def encode(self, x: Tensor) -> Features:
        """Deterministic encoder features of x `[B, C, H, W]` in [-1, 1]."""

    @abstractmethod
    def posterior_from_features(self, features: Features, generator: torch.Generator | None, sample: bool = True) -> tuple[Tensor, Tensor]:
        """z ~ q(z | x) (or the means with `sample=False`) given `encode(x)`: (z `[B, D]`, kl `[B, L]` nats per layer)."""

    def posterior(self, x: Tensor, generator: torch.Generator | None, sample: bool = True) -> tuple[Tensor, Tensor]:
        """Draw z ~ q(z | x): (z `[B, D]`, per-layer KL against the Gaussian prior `[B, L]`)."""
        return self.posterior_from_features(self.encode(x), generator, sample)

    @staticmethod
    def repeat_features(features: Features, n: int) -> Features:
        """Features of each image repeated n times along the batch axis (S posterior draws per image)."""
        if isinstance(features, Tensor):
            return features.repeat_interleave(n, dim=0)
        return [f.repeat_interleave(n, dim=0) for f in features]

    # ---- generative model ---------------------------------------------------------------
    @abstractmethod
    def decode_params(self, z: Tensor) -> Tensor:
        """z `[B, D]` -> the likelihood's parameters `[B, P, H, W]` (the Gaussian's: the pixel means, P = C)."""

    def decode(self, z: Tensor) -> Tensor:
        """z `[B, D]` -> the decoder's image `[B, C, H, W]` on the [-1, 1] scale (the likelihood's mean)."""
        return self.likelihood.mean(self.decode_params(z))

    @abstractmethod
    def u_to_z(self, u: Tensor) -> Tensor:
        """T: u `[B, D]` -> z `[B, D]`."""

    @abstractmethod
    def z_to_u(self, z: Tensor) -> Tensor:
        """T^{-1}: z `[B, D]` -> u `[B, D]`."""

    @abstractmethod
    def log_prior_gauss(self, z: Tensor) -> Tensor:
        """log p_Gauss(z) `[B]`, which includes -log|det dT/du| (see the module docstring)."""

    @staticmethod
    def calibrated_log_std(x: Tensor, x_mean: Tensor) -> Tensor:
        """Closed-form ML decoder log std: 0.5 * log(per-pixel MSE), clamped to LOG_STD_X_RANGE, no gradient."""
        mse = ((x - x_mean.detach()) ** 2).mean()
        return (0.5 * torch.log(mse.clamp_min(1e-12))).clamp(*LOG_STD_X_RANGE)

    def _log_std(self, log_std: Tensor | None) -> Tensor:
        return self.log_std_x.clamp(*LOG_STD_X_RANGE) if log_std is None else log_std

    def recon_nll(self, x: Tensor, params: Tensor, log_std: Tensor | None = None) -> Tensor:
        """-log p(x | z) in nats, `[B]`, given `decode_params(z)` `[B, P, H, W]`; the Gaussian's scalar std is
        exp(log_std) (default: the stored one)."""
        return self.likelihood.nll(x, params, self._log_std(log_std))

    def discrete_nll(self, x: Tensor, params: Tensor, log_std: Tensor | None = None) -> Tensor:
        """-log P(8-bit bin of x | z) in nats, `[B]`: the common discrete scale on which likelihoods compare."""
        return self.likelihood.discrete_nll(x, params, self._log_std(log_std))

    def elbo_terms(self, x: Tensor, generator: torch.Generator | None, calibrate: bool = False) -> ElboTerms:
        """One-sample negative-ELBO terms for x `[B, C, H, W]` in [-1, 1].

        With `calibrate`, the decoder std is the batch's closed-form optimum (training) instead of
        the stored one (evaluation).
        """
        z, kl = self.posterior(x, generator, sample=True)
        return self.terms_from_params(x, self.decode_params(z), kl, calibrate)

    def terms_from_params(self, x: Tensor, params: Tensor, kl: Tensor, calibrate: bool) -> ElboTerms:
        """ElboTerms from the decoder's parameters `[B, P, H, W]` and the KL `[B, L]` (see `elbo_terms`)."""
        x_mean = self.likelihood.mean(params)
        log_std = self.calibrated_log_std(x, x_mean) if calibrate else None
        return ElboTerms(recon_nll=self.recon_nll(x, params, log_std), kl=kl, x_mean=x_mean, params=params)

    def sample_prior(self, n: int, generator: torch.Generator | None, temperature: float = 1.0) -> Tensor:
        """z = T(temperature * u), u ~ N(0, I): `[n, D]`."""
        u = torch.randn((n, self.latent_dim), generator=generator, device=self.log_std_x.device)
        return self.u_to_z(temperature * u)
