"""Hierarchical VAE backbone with a conditional Gaussian hierarchy and vector groups (`hvae`; DESIGN §3, Joint-EBM).

Latent groups are vectors z_1 (bottom) ... z_L (top), stored concatenated as one tensor
`[B, D]` with D = sum(group_dims), bottom group first. The generative model is

    p(z_L) = N(0, I),  p(z_i | z_{i+1}) = N(mu_i(z_{i+1}), sigma_i(z_{i+1})^2),  p(x | z_1) = N(dec(z_1), s_x^2 I)

The decoder reads z_1 only. The u-space map T (top-down) is `z_L = u_L, z_i = mu_i(z_{i+1}) + sigma_i(z_{i+1}) * u_i`;
the shared decoder std and the rest of the interface are in `hebmctl.models.backbone`.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hebmctl.models.backbone import (  # noqa: F401  (re-exported for older imports)
    LOG_STD_X_RANGE,
    MIN_STD,
    Backbone,
    BackboneMisfit,
    ElboTerms,
    draw_gaussian,
    gaussian_kl,
    gaussian_log_prob,
)
from hebmctl.models.likelihood import Likelihood


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
    """z_1 `[B, d_in]` -> likelihood parameters `[B, out_channels, H, W]`: mirror of ConvEncoder."""

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


class HierarchicalVAE(Backbone):
    """Conditional-hierarchy VAE with vector latent groups; see the module docstring.

    `inference="top-down"`: q(z_L | x) prod_i q(z_i | z_{i+1}, x), KL per layer in closed form.
    `inference="bottom-up"`: q(z_1 | x) prod_i q(z_{i+1} | z_i) (Joint-EBM eq. 4), KL per layer as
    the one-sample estimate log q(z_i | .) - log p(z_i | z_{i+1}).
    """

    family = "hvae"

    def __init__(
        self,
        image_shape: tuple[int, int, int],
        latent_dims: tuple[int, ...],
        channels: int = 32,
        mlp_hidden: int = 256,
        inference: Literal["top-down", "bottom-up"] = "top-down",
        likelihood: Likelihood | None = None,
    ) -> None:
        super().__init__(likelihood)
        height, width, n_channels = image_shape
        self.check_fits(image_shape)
        self.image_shape = tuple(image_shape)
        self.group_shapes = tuple((int(d),) for d in latent_dims)
        self.inference = inference
        dims, n_layers = self.group_dims, len(self.group_dims)
        # Generative model: p(z_i | z_{i+1}) for i = 0 .. L-2 (0-based), p(x | z_1).
        self.prior_heads = nn.ModuleList(GaussianHead(dims[i + 1], mlp_hidden, dims[i]) for i in range(n_layers - 1))
        self.decoder = ConvDecoder(dims[0], channels, self.likelihood.param_channels(n_channels), height, width)
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

    @staticmethod
    def check_fits(image_shape: tuple[int, int, int]) -> None:
        """Two stride-2 convolutions: height and width must be divisible by 4."""
        height, width, _ = image_shape
        if height < 4 or width < 4 or height % 4 or width % 4:
            raise BackboneMisfit(f"the hvae backbone needs image height and width divisible by 4 (two stride-2 convolutions), got {height}x{width}")

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

    def log_prior_gauss(self, z: Tensor) -> Tensor:
        """log p_Gauss(z) = sum_i log N(z_i; mu_i(z_{i+1}), sigma_i(z_{i+1})^2), top layer N(0, I): `[B, D]` -> `[B]`."""
        groups = self.split_groups(z)
        total = torch.zeros(z.shape[0], device=z.device, dtype=z.dtype)
        for i, z_i in enumerate(groups):
            above = groups[i + 1] if i < self.num_layers - 1 else z
            mu, sigma = self.prior_params(i, above)
            total = total + gaussian_log_prob(z_i, mu, sigma)
        return total

    # ---- generative and inference passes -----------------------------------------------------
    def decode_params(self, z: Tensor) -> Tensor:
        """z `[B, D]` -> likelihood parameters `[B, P, H, W]` (only z_1 is read: p(x | z_1))."""
        return self.decoder(self.split_groups(z)[0])

    def encode(self, x: Tensor) -> Tensor:
        """x `[B, C, H, W]` -> encoder features `[B, mlp_hidden]`."""
        return self.encoder(x)

    def posterior_from_features(self, h: Tensor, generator: torch.Generator | None, sample: bool = True) -> tuple[Tensor, Tensor]:
        """`posterior` given encoder features h `[B, mlp_hidden]`: (z `[B, D]`, kl `[B, L]`)
        (closed-form KL for top-down inference, one-sample estimate for bottom-up)."""
        if self.inference == "top-down":
            return self._posterior_top_down(h, generator, sample)
        return self._posterior_bottom_up(h, generator, sample)

    def _posterior_top_down(self, h: Tensor, generator: torch.Generator | None, sample: bool) -> tuple[Tensor, Tensor]:
        n_layers = self.num_layers
        z_groups: list[Tensor] = [h] * n_layers
        kls: list[Tensor] = [h] * n_layers
        for i in range(n_layers - 1, -1, -1):
            above = z_groups[i + 1] if i < n_layers - 1 else None
            cond = h if above is None else torch.cat([h, above], dim=-1)
            mu_q, std_q = self.q_heads[i](cond)
            mu_p, std_p = self.prior_params(i, above if above is not None else h)
            z_groups[i] = draw_gaussian(mu_q, std_q, generator, sample)
            kls[i] = gaussian_kl(mu_q, std_q, mu_p, std_p)
        return self.join_groups(z_groups), torch.stack(kls, dim=-1)

    def _posterior_bottom_up(self, h: Tensor, generator: torch.Generator | None, sample: bool) -> tuple[Tensor, Tensor]:
        n_layers = self.num_layers
        z_groups: list[Tensor] = []
        log_q: list[Tensor] = []
        cond = h
        for i in range(n_layers):
            mu_q, std_q = self.q_heads[i](cond)
            z_i = draw_gaussian(mu_q, std_q, generator, sample)
            z_groups.append(z_i)
            log_q.append(gaussian_log_prob(z_i, mu_q, std_q))
            cond = z_i
        kls = []
        for i in range(n_layers):
            above = z_groups[i + 1] if i < n_layers - 1 else z_groups[i]
            mu_p, std_p = self.prior_params(i, above)
            kls.append(log_q[i] - gaussian_log_prob(z_groups[i], mu_p, std_p))
        return self.join_groups(z_groups), torch.stack(kls, dim=-1)
