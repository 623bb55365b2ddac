"""Hierarchical VAE backbone with a conditional Gaussian hierarchy (DESIGN §3, Joint-EBM).

Latent groups are vectors z_1 (bottom) ... z_L (top), stored concatenated as one tensor
`[B, D]` with D = sum(group_dims), bottom group first. The generative model is

    p(z_L) = N(0, I),  p(z_i | z_{i+1}) = N(mu_i(z_{i+1}), sigma_i(z_{i+1})^2),  p(x | z_1) = N(dec(z_1), s_x^2 I)

with a shared scalar decoder std s_x, calibrated in closed form: for a Gaussian decoder with one
shared variance the maximum-likelihood s_x^2 is the per-pixel MSE (Rybkin et al. 2021, sigma-VAE).
Training uses the batch's value; the stored value (`log_std_x`, a buffer) is set from the
training set when the backbone is finalised. The u-space map T (top-down) is
`z_L = u_L, z_i = mu_i(z_{i+1}) + sigma_i(z_{i+1}) * u_i`; under the Gaussian prior u ~ N(0, I).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

MIN_STD = 1e-2
"""Floor of every latent standard deviation. T^{-1} divides by sigma, so float32 rounding of z
(about 6e-8 * |z|) comes back as an error of about 6e-8 * |z| / sigma in u: the floor keeps the
round trip within 1e-5 for the latent scales a trained backbone has."""

LOG_STD_X_RANGE = (math.log(0.01), math.log(1.0))
"""Allowed range of the decoder's log std on the [-1, 1] pixel scale."""


def _mlp(d_in: int, d_hidden: int, d_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(d_in, d_hidden), nn.SiLU(), nn.Linear(d_hidden, d_hidden), nn.SiLU(), nn.Linear(d_hidden, d_out))


class GaussianHead(nn.Module):
    """MLP from a conditioning vector `[B, d_in]` to a diagonal Gaussian (mu, sigma), each `[B, d_out]`."""

    def __init__(self, d_in: int, d_hidden: int, d_out: int) -> None:
        super().__init__()
        self.net = _mlp(d_in, d_hidden, 2 * d_out)

    def forward(self, cond: Tensor) -> tuple[Tensor, Tensor]:
        mu, raw_std = self.net(cond).chunk(2, dim=-1)
        return mu, F.softplus(raw_std + 0.5413) + MIN_STD  # softplus(0.5413) ~= 1: starts near unit std


class ConvEncoder(nn.Module):
    """x `[B, C, H, W]` (H, W divisible by 4) -> features `[B, d_out]`: two stride-2 convs."""

    def __init__(self, in_channels: int, channels: int, height: int, width: int, d_out: int) -> None:
        super().__init__()
        c = channels
        self.net = nn.Sequential(
            nn.Conv2d(in_channels, c, 3, padding=1), nn.SiLU(),
            nn.Conv2d(c, 2 * c, 4, stride=2, padding=1), nn.SiLU(),
            nn.Conv2d(2 * c, 4 * c, 4, stride=2, padding=1), nn.SiLU(),
            nn.Flatten(),
            nn.Linear(4 * c * (height // 4) * (width // 4), d_out), nn.SiLU(),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class ConvDecoder(nn.Module):
    """z_1 `[B, d_in]` -> pixel means `[B, C, H, W]`: mirror of ConvEncoder."""

    def __init__(self, d_in: int, channels: int, out_channels: int, height: int, width: int) -> None:
        super().__init__()
        c = channels
        self.base_shape = (4 * c, height // 4, width // 4)
        self.fc = nn.Sequential(nn.Linear(d_in, 4 * c * (height // 4) * (width // 4)), nn.SiLU())
        self.net = nn.Sequential(
            nn.ConvTranspose2d(4 * c, 2 * c, 4, stride=2, padding=1), nn.SiLU(),
            nn.ConvTranspose2d(2 * c, c, 4, stride=2, padding=1), nn.SiLU(),
            nn.Conv2d(c, out_channels, 3, padding=1),
        )

    def forward(self, z1: Tensor) -> Tensor:
        return self.net(self.fc(z1).view(-1, *self.base_shape))


@dataclass(frozen=True)
class ElboTerms:
    """Per-example terms of the negative ELBO: recon_nll `[B]` (nats), kl `[B, L]` (nats per layer)."""

    recon_nll: Tensor
    kl: Tensor
    x_mean: Tensor


def gaussian_log_prob(x: Tensor, mu: Tensor, std: Tensor) -> Tensor:
    """log N(x; mu, std^2) summed over the last axis: `[B, d]` -> `[B]`."""
    return (-0.5 * ((x - mu) / std) ** 2 - torch.log(std) - 0.5 * math.log(2 * math.pi)).sum(-1)


def gaussian_kl(mu_q: Tensor, std_q: Tensor, mu_p: Tensor, std_p: Tensor) -> Tensor:
    """KL(N(mu_q, std_q^2) || N(mu_p, std_p^2)) summed over the last axis: `[B, d]` -> `[B]`."""
    var_ratio = (std_q / std_p) ** 2
    return 0.5 * (var_ratio + ((mu_q - mu_p) / std_p) ** 2 - 1 - torch.log(var_ratio)).sum(-1)


class HierarchicalVAE(nn.Module):
    """Conditional-hierarchy VAE with vector latent groups; see the module docstring.

    `inference="top-down"`: q(z_L | x) prod_i q(z_i | z_{i+1}, x), KL per layer in closed form.
    `inference="bottom-up"`: q(z_1 | x) prod_i q(z_{i+1} | z_i) (Joint-EBM eq. 4), KL per layer as
    the one-sample estimate log q(z_i | .) - log p(z_i | z_{i+1}).
    """

    def __init__(
        self,
        image_shape: tuple[int, int, int],
        latent_dims: tuple[int, ...],
        channels: int = 32,
        mlp_hidden: int = 256,
        inference: Literal["top-down", "bottom-up"] = "top-down",
    ) -> None:
        super().__init__()
        height, width, n_channels = image_shape
        if height % 4 or width % 4:
            raise ValueError(f"image height and width must be divisible by 4, got {height}x{width}")
        self.image_shape = tuple(image_shape)
        self.group_dims = tuple(latent_dims)
        self.inference = inference
        dims, n_layers = self.group_dims, len(self.group_dims)
        # Generative model: p(z_i | z_{i+1}) for i = 0 .. L-2 (0-based), p(x | z_1).
        self.prior_heads = nn.ModuleList(GaussianHead(dims[i + 1], mlp_hidden, dims[i]) for i in range(n_layers - 1))
        self.decoder = ConvDecoder(dims[0], channels, n_channels, height, width)
        self.register_buffer("log_std_x", torch.zeros(()))
        # Inference model.
        self.encoder = ConvEncoder(n_channels, channels, height, width, mlp_hidden)
        if inference == "top-down":
            self.q_heads = nn.ModuleList(
                GaussianHead(mlp_hidden + (dims[i + 1] if i < n_layers - 1 else 0), mlp_hidden, dims[i]) for i in range(n_layers)
            )
        elif inference == "bottom-up":
            self.q_heads = nn.ModuleList(
                GaussianHead(mlp_hidden if i == 0 else dims[i - 1], mlp_hidden, dims[i]) for i in range(n_layers)
            )
        else:
            raise ValueError(f"unknown inference {inference!r}")

    # ---- latent bookkeeping -------------------------------------------------------------
    @property
    def latent_dim(self) -> int:
        return sum(self.group_dims)

    @property
    def num_layers(self) -> int:
        return len(self.group_dims)

    def split_groups(self, v: Tensor) -> list[Tensor]:
        """`[..., D]` -> list of `[..., d_i]`, bottom group first."""
        return list(torch.split(v, list(self.group_dims), dim=-1))

    def join_groups(self, groups: list[Tensor]) -> Tensor:
        return torch.cat(groups, dim=-1)

    def prior_params(self, i: int, z_above: Tensor | None) -> tuple[Tensor, Tensor]:
        """(mu_i, sigma_i) of p(z_i | z_{i+1}) for 0-based layer i; the top layer is N(0, I)."""
        if i == self.num_layers - 1:
            shape = (z_above.shape[0] if z_above is not None else 1, self.group_dims[i])
            zeros = torch.zeros(shape, device=self.log_std_x.device)
            return zeros, torch.ones_like(zeros)
        return self.prior_heads[i](z_above)

    # ---- u-space (DESIGN §3) -------------------------------------------------------------
    def u_to_z(self, u: Tensor) -> Tensor:
        """T: u `[B, D]` -> z `[B, D]`, top-down: z_L = u_L, z_i = mu_i(z_{i+1}) + sigma_i(z_{i+1}) u_i."""
        u_groups = self.split_groups(u)
        z_groups: list[Tensor] = [u_groups[-1]] * self.num_layers
        for i in range(self.num_layers - 2, -1, -1):
            mu, sigma = self.prior_heads[i](z_groups[i + 1])
            z_groups[i] = mu + sigma * u_groups[i]
        return self.join_groups(z_groups)

    def z_to_u(self, z: Tensor) -> Tensor:
        """T^{-1}: z `[B, D]` -> u `[B, D]`: u_i = (z_i - mu_i(z_{i+1})) / sigma_i(z_{i+1}), u_L = z_L."""
        z_groups = self.split_groups(z)
        u_groups = list(z_groups)
        for i in range(self.num_layers - 1):
            mu, sigma = self.prior_heads[i](z_groups[i + 1])
            u_groups[i] = (z_groups[i] - mu) / sigma
        return self.join_groups(u_groups)

    # ---- generative and inference passes -----------------------------------------------------
    def decode(self, z: Tensor) -> Tensor:
        """z `[B, D]` -> pixel means `[B, C, H, W]` (only z_1 is read: p(x | z_1))."""
        return self.decoder(self.split_groups(z)[0])

    @staticmethod
    def calibrated_log_std(x: Tensor, x_mean: Tensor) -> Tensor:
        """Closed-form ML decoder log std: 0.5 * log(per-pixel MSE), clamped to LOG_STD_X_RANGE, no gradient."""
        mse = ((x - x_mean.detach()) ** 2).mean()
        return (0.5 * torch.log(mse.clamp_min(1e-12))).clamp(*LOG_STD_X_RANGE)

    def recon_nll(self, x: Tensor, x_mean: Tensor, log_std: Tensor | None = None) -> Tensor:
        """-log p(x | z) in nats, `[B]`: Gaussian with scalar std exp(log_std) (default: the stored one)."""
        log_std = self.log_std_x.clamp(*LOG_STD_X_RANGE) if log_std is None else log_std
        per_pixel = 0.5 * ((x - x_mean) / log_std.exp()) ** 2 + log_std + 0.5 * math.log(2 * math.pi)
        return per_pixel.flatten(1).sum(-1)

    def posterior(self, x: Tensor, generator: torch.Generator | None, sample: bool = True) -> tuple[Tensor, Tensor]:
        """Draw z ~ q(z | x) (or follow the means when `sample` is False).

        Returns (z `[B, D]`, kl `[B, L]`): the latents and the per-layer KL terms against the
        conditional prior (closed form for top-down, one-sample estimate for bottom-up).
        """
        return self.posterior_from_features(self.encoder(x), generator, sample)

    def posterior_from_features(self, h: Tensor, generator: torch.Generator | None, sample: bool = True) -> tuple[Tensor, Tensor]:
        """`posterior` given encoder features h `[B, mlp_hidden]` (repeat h to draw several samples per image)."""
        if self.inference == "top-down":
            return self._posterior_top_down(h, generator, sample)
        return self._posterior_bottom_up(h, generator, sample)

    def _draw(self, mu: Tensor, std: Tensor, generator: torch.Generator | None, sample: bool) -> Tensor:
        if not sample:
            return mu
        return mu + std * torch.randn(mu.shape, generator=generator, device=mu.device, dtype=mu.dtype)

    def _posterior_top_down(self, h: Tensor, generator: torch.Generator | None, sample: bool) -> tuple[Tensor, Tensor]:
        n_layers = self.num_layers
        z_groups: list[Tensor] = [h] * n_layers
        kls: list[Tensor] = [h] * n_layers
        for i in range(n_layers - 1, -1, -1):
            above = z_groups[i + 1] if i < n_layers - 1 else None
            cond = h if above is None else torch.cat([h, above], dim=-1)
            mu_q, std_q = self.q_heads[i](cond)
            mu_p, std_p = self.prior_params(i, above if above is not None else h)
            z_groups[i] = self._draw(mu_q, std_q, generator, sample)
            kls[i] = gaussian_kl(mu_q, std_q, mu_p, std_p)
        return self.join_groups(z_groups), torch.stack(kls, dim=-1)

    def _posterior_bottom_up(self, h: Tensor, generator: torch.Generator | None, sample: bool) -> tuple[Tensor, Tensor]:
        n_layers = self.num_layers
        z_groups: list[Tensor] = []
        log_q: list[Tensor] = []
        cond = h
        for i in range(n_layers):
            mu_q, std_q = self.q_heads[i](cond)
            z_i = self._draw(mu_q, std_q, generator, sample)
            z_groups.append(z_i)
            log_q.append(gaussian_log_prob(z_i, mu_q, std_q))
            cond = z_i
        kls = []
        for i in range(n_layers):
            above = z_groups[i + 1] if i < n_layers - 1 else z_groups[i]
            mu_p, std_p = self.prior_params(i, above)
            kls.append(log_q[i] - gaussian_log_prob(z_groups[i], mu_p, std_p))
        return self.join_groups(z_groups), torch.stack(kls, dim=-1)

    def elbo_terms(self, x: Tensor, generator: torch.Generator | None, calibrate: bool = False) -> ElboTerms:
        """One-sample negative-ELBO terms for x `[B, C, H, W]` in [-1, 1].

        With `calibrate`, the decoder std is the batch's closed-form optimum (training) instead of
        the stored one (evaluation).
        """
        z, kl = self.posterior(x, generator, sample=True)
        x_mean = self.decode(z)
        log_std = self.calibrated_log_std(x, x_mean) if calibrate else None
        return ElboTerms(recon_nll=self.recon_nll(x, x_mean, log_std), kl=kl, x_mean=x_mean)

    def sample_prior(self, n: int, generator: torch.Generator | None, temperature: float = 1.0) -> Tensor:
        """z = T(temperature * u), u ~ N(0, I): `[n, D]`."""
        u = torch.randn((n, self.latent_dim), generator=generator, device=self.log_std_x.device)
        return self.u_to_z(temperature * u)
