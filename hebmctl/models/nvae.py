"""`nvae`: a top-down hierarchical VAE with spatial latent groups (NVAE / VDVAE style; DESIGN §3).

Scales s = 0 (top, lowest resolution) .. S-1; scale s holds `groups_per_scale[s]` groups, each a map
`[group_channels, r_s, r_s]` with `r_s = H / 2^(S - s)` (28x28 images, S = 2: 7x7 then 14x14).

- Bottom-up encoder: a stem convolution, then per scale a stride-2 convolution and a residual cell;
  `e_s` is its feature map at resolution r_s.
- Top-down decoder: a learned constant `h` at the lowest resolution. For each group from the top:
  the prior `p(z_j | z_{>j}) = N(mu_j(h), sigma_j(h))` from the state h (the top group's prior is
  N(0, I)); the posterior in NVAE's residual form `mu_q = mu_p + dmu`, `sigma_q = sigma_p * dsigma` with
  (dmu, dsigma) from `[h, e_s]`; the group is merged into the state, `h <- h + cell([h, z_j])`, followed
  by residual cells; between scales h is up-sampled. The image mean is decoded from the final h, so
  every group reaches the pixels.
- `T` runs the same top-down path once: `z_j = mu_j(h(z_{>j})) + sigma_j(h(z_{>j})) * u_j`.

No batch normalisation anywhere (the state of one example never depends on the batch), so sampling
needs no cached statistics and the energy of one example is independent of the others.

Groups are stored bottom to top like every backbone: flat index i = L - 1 - j for top-down index j.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hebmctl.models.backbone import (
    MIN_STD,
    Backbone,
    BackboneMisfit,
    ElboTerms,
    draw_gaussian,
    gaussian_kl,
    gaussian_log_prob,
)
from hebmctl.models.likelihood import Likelihood


def _conv3(c_in: int, c_out: int) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, 3, padding=1)


class ResidualCell(nn.Module):
    """h `[B, C, r, r]` -> h + conv(silu(conv(silu(h)))); the last convolution starts at 0.1x its default scale."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1, self.conv2 = _conv3(channels, channels), _conv3(channels, channels)
        with torch.no_grad():
            self.conv2.weight.mul_(0.1)

    def forward(self, h: Tensor) -> Tensor:
        return h + self.conv2(F.silu(self.conv1(F.silu(h))))


class MergeCell(nn.Module):
    """h + cell([h, z]): a 1x1 convolution of the concatenation, SiLU, a 3x3 convolution (scaled 0.1 at init)."""

    def __init__(self, channels: int, z_channels: int) -> None:
        super().__init__()
        self.mix = nn.Conv2d(channels + z_channels, channels, 1)
        self.conv = _conv3(channels, channels)
        with torch.no_grad():
            self.conv.weight.mul_(0.1)

    def forward(self, h: Tensor, z: Tensor) -> Tensor:
        return h + self.conv(F.silu(self.mix(torch.cat([h, z], dim=1))))


def _prior_std(raw: Tensor) -> Tensor:
    return F.softplus(raw + 0.5413) + MIN_STD  # softplus(0.5413) ~= 1: starts near unit std


class NVAE(Backbone):
    """Spatial top-down hierarchical VAE; see the module docstring.

    Args:
        image_shape: (H, W, C); H and W divisible by 2^S, S = len(groups_per_scale).
        groups_per_scale: latent groups at each scale, top (lowest resolution) first.
        group_channels: channels of every latent group.
        channels: width of the encoder and of the decoder state.
        cells_per_group: residual cells after each merged group.
        likelihood: p(x | z) (default: the Gaussian); the output convolution has its parameter channels.
    """

    family = "nvae"

    def __init__(
        self,
        image_shape: tuple[int, int, int],
        groups_per_scale: tuple[int, ...] = (2, 2),
        group_channels: int = 4,
        channels: int = 32,
        cells_per_group: int = 1,
        likelihood: Likelihood | None = None,
    ) -> None:
        super().__init__(likelihood)
        self.check_fits(image_shape, groups_per_scale)
        height, width, n_channels = image_shape
        n_scales = len(groups_per_scale)
        self.image_shape = tuple(image_shape)
        self.groups_per_scale = tuple(groups_per_scale)
        self.resolutions = tuple((height >> (n_scales - s), width >> (n_scales - s)) for s in range(n_scales))
        self.group_scale = tuple(s for s, n in enumerate(groups_per_scale) for _ in range(n))  # top-down order
        top_down_shapes = [(group_channels, *self.resolutions[s]) for s in self.group_scale]
        self.group_shapes = tuple(reversed(top_down_shapes))  # bottom to top
        self.z_channels = group_channels
        c, n_groups = channels, len(self.group_scale)
        # Bottom-up encoder: e_s at resolution r_s (encoder level k = S - s from the image).
        self.stem = _conv3(n_channels, c)
        self.down = nn.ModuleList(nn.Conv2d(c, c, 4, stride=2, padding=1) for _ in range(n_scales))
        self.enc_cells = nn.ModuleList(ResidualCell(c) for _ in range(n_scales))
        # Top-down decoder.
        self.h0 = nn.Parameter(0.1 * torch.randn(1, c, *self.resolutions[0]))
        self.prior_convs = nn.ModuleList(_conv3(c, 2 * group_channels) for _ in range(n_groups - 1))  # groups j >= 1
        self.post_convs = nn.ModuleList(_conv3(2 * c, 2 * group_channels) for _ in range(n_groups))
        for conv in self.post_convs:  # q = p at initialisation (dmu = 0, dsigma = 1)
            nn.init.zeros_(conv.weight), nn.init.zeros_(conv.bias)
        self.merges = nn.ModuleList(MergeCell(c, group_channels) for _ in range(n_groups))
        self.dec_cells = nn.ModuleList(nn.Sequential(*(ResidualCell(c) for _ in range(cells_per_group))) for _ in range(n_groups))
        self.up = nn.ModuleList(nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"), _conv3(c, c), nn.SiLU()) for _ in range(n_scales - 1))
        self.out_up = nn.ConvTranspose2d(c, c, 4, stride=2, padding=1)
        self.out_conv = _conv3(c, self.likelihood.param_channels(n_channels))

    @staticmethod
    def check_fits(image_shape: tuple[int, int, int], groups_per_scale: tuple[int, ...]) -> None:
        """Every scale halves the resolution: H and W divisible by 2^S with at least 2x2 at the top."""
        height, width, _ = image_shape
        n_scales = len(groups_per_scale)
        factor = 2**n_scales
        if n_scales < 1 or any(n < 1 for n in groups_per_scale):
            raise BackboneMisfit(f"nvae needs at least one scale with at least one group, got groups_per_scale={tuple(groups_per_scale)}")
        if height % factor or width % factor or height // factor < 2 or width // factor < 2:
            raise BackboneMisfit(
                f"nvae with {n_scales} latent scales halves the resolution {n_scales} times, so image height and width must be "
                f"divisible by {factor} with at least 2 pixels left; {height}x{width} does not fit. Use fewer scales "
                f"(--groups-per-scale with {n_scales - 1} entries) or another image size."
            )

    # ---- the top-down walk --------------------------------------------------------------
    def _prior(self, j: int, h: Tensor) -> tuple[Tensor, Tensor]:
        """(mu, sigma) of p(z_j | z_{>j}) from the state h; N(0, I) for the top group j = 0."""
        if j == 0:
            zeros = h.new_zeros(h.shape[0], self.z_channels, *h.shape[2:])
            return zeros, torch.ones_like(zeros)
        mu, raw = self.prior_convs[j - 1](F.silu(h)).chunk(2, dim=1)
        return mu, _prior_std(raw)

    def _walk(self, batch: int, choose) -> tuple[Tensor, list[Tensor]]:
        """Run the top-down path; `choose(j, h, mu_p, sigma_p) -> z_j` picks each group (top-down index j).
        Returns the final state h `[B, C, H/2, W/2]` and the groups in top-down order."""
        h = self.h0.expand(batch, -1, -1, -1)
        groups: list[Tensor] = []
        for j, scale in enumerate(self.group_scale):
            mu_p, sigma_p = self._prior(j, h)
            z = choose(j, h, mu_p, sigma_p)
            groups.append(z)
            h = self.dec_cells[j](self.merges[j](h, z))
            if j + 1 < len(self.group_scale) and self.group_scale[j + 1] != scale:
                h = self.up[scale](h)
        return h, groups

    def _to_maps_top_down(self, v: Tensor) -> list[Tensor]:
        return list(reversed(self.group_maps(v)))

    def _from_top_down(self, groups: list[Tensor]) -> Tensor:
        return self.flatten_groups(list(reversed(groups)))

    def _pixels(self, h: Tensor) -> Tensor:
        return self.out_conv(F.silu(self.out_up(h)))

    # ---- interface ----------------------------------------------------------------------
    def encode(self, x: Tensor) -> list[Tensor]:
        """x `[B, C, H, W]` -> encoder maps e_s `[B, C', r_s, r_s]`, top scale (lowest resolution) first."""
        h = F.silu(self.stem(x))
        features = []
        for down, cell in zip(self.down, self.enc_cells):
            h = cell(F.silu(down(h)))
            features.append(h)
        return list(reversed(features))

    def _posterior_walk(self, features: list[Tensor], generator: torch.Generator | None, sample: bool) -> tuple[Tensor, Tensor, Tensor]:
        """(final state h, z `[B, D]`, kl `[B, L]` bottom to top)."""
        kls: list[Tensor] = []

        def choose(j: int, h: Tensor, mu_p: Tensor, sigma_p: Tensor) -> Tensor:
            dmu, raw = self.post_convs[j](F.silu(torch.cat([h, features[self.group_scale[j]]], dim=1))).chunk(2, dim=1)
            mu_q, sigma_q = mu_p + dmu, sigma_p * (F.softplus(raw + 0.5413) + 1e-3)
            kls.append(gaussian_kl(mu_q, sigma_q, mu_p, sigma_p))
            return draw_gaussian(mu_q, sigma_q, generator, sample)

        h, groups = self._walk(features[0].shape[0], choose)
        return h, self._from_top_down(groups), torch.stack(list(reversed(kls)), dim=-1)

    def posterior_from_features(self, features: list[Tensor], generator: torch.Generator | None, sample: bool = True) -> tuple[Tensor, Tensor]:
        _, z, kl = self._posterior_walk(features, generator, sample)
        return z, kl

    def elbo_terms(self, x: Tensor, generator: torch.Generator | None, calibrate: bool = False) -> ElboTerms:
        """As `Backbone.elbo_terms`, with one top-down walk (the posterior walk's final state is decoded)."""
        h, _, kl = self._posterior_walk(self.encode(x), generator, True)
        return self.terms_from_params(x, self._pixels(h), kl, calibrate)

    def decode_params(self, z: Tensor) -> Tensor:
        """z `[B, D]` -> likelihood parameters `[B, P, H, W]`: the top-down path with the given groups merged."""
        maps = self._to_maps_top_down(z)
        h, _ = self._walk(z.shape[0], lambda j, h, mu, sigma: maps[j])
        return self._pixels(h)

    def u_to_z(self, u: Tensor) -> Tensor:
        """T: z_j = mu_j(h(z_{>j})) + sigma_j(h(z_{>j})) * u_j, top-down: `[B, D]` -> `[B, D]`."""
        maps = self._to_maps_top_down(u)
        _, groups = self._walk(u.shape[0], lambda j, h, mu, sigma: mu + sigma * maps[j])
        return self._from_top_down(groups)

    def z_to_u(self, z: Tensor) -> Tensor:
        """T^{-1}: u_j = (z_j - mu_j) / sigma_j with the state of the given z_{>j}: `[B, D]` -> `[B, D]`."""
        maps, u_groups = self._to_maps_top_down(z), []

        def choose(j: int, h: Tensor, mu: Tensor, sigma: Tensor) -> Tensor:
            u_groups.append((maps[j] - mu) / sigma)
            return maps[j]

        self._walk(z.shape[0], choose)
        return self._from_top_down(u_groups)

    def log_prior_gauss(self, z: Tensor) -> Tensor:
        """sum_j log N(z_j; mu_j, sigma_j^2) along the top-down path: `[B, D]` -> `[B]`."""
        maps, terms = self._to_maps_top_down(z), []

        def choose(j: int, h: Tensor, mu: Tensor, sigma: Tensor) -> Tensor:
            terms.append(gaussian_log_prob(maps[j], mu, sigma))
            return maps[j]

        self._walk(z.shape[0], choose)
        return torch.stack(terms, dim=0).sum(0)
