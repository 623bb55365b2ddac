"""Latent inpainting (`sample --inpaint`, issue 16 item 4): fill the masked pixels of images by resampling latents.

Our method: CDRL (App. C.1) inpaints in pixel space by replacement, the known region replaced by the forward-noised
ground truth at each diffusion level. We carry the replacement to the latents of a hierarchical VAE:

1. infer: u_q = T^{-1}(mean of q(z | x_fill)) `[B, D]`, x_fill = x with the masked pixels set to the mean of the
   visible ones (the encoder has never seen holes; a neutral fill);
2. free latents: M `[D]` = 1 where a latent's footprint overlaps the masked pixels
   (`Backbone.latent_footprint_mask`), restricted to the chosen layers;
3. replacement: u = `prior.resample_masked(u_q, M)`: the fixed coordinates stay exactly u_q (the diffusion prior
   replaces them by ONE forward trajectory of u_q at each level), the free ones are drawn from p(u_free | u_fixed);
   the temperature tau scales the free coordinates only (the fixed ones are the image's); with `fix_in_z`, the fixed
   latents keep their inferred z instead of their u (`anchor_in_z`: per-layer replacement down the hierarchy);
4. optional data consistency (also ours): K Langevin steps on the free coordinates of
   log p(x_vis | T(u)) + F(T(u)) - |u|^2 / 2 (the posterior Langevin of Joint-EBM §3.2 with the likelihood of the
   visible pixels only; F = the prior's `neg_energy_of_z`, 0 where it has none);
5. x_raw = decoder mean(T(u)); the output pastes the visible pixels of x back: x_out = m * x_raw + (1 - m) * x.

Pure functions of tensors and an explicit generator; no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from hebmctl.models.backbone import Backbone
from hebmctl.priors.base import NegEnergyOfZ, Prior
from hebmctl.samplers import LogDensity, langevin
from hebmctl.samplers.conditional import compose, masked_log_density

DEFAULT_DRAWS, DEFAULT_GUIDANCE_STEPS, DEFAULT_GUIDANCE_STEP_SIZE = 4, 0, 0.03
"""Inpaintings per image; data-consistency steps (0: replacement alone); its step size (measured: the posterior anchor
s = 0.1 makes the chain on the visible pixels bounce, 0.03 converges; docs/decisions.md "Latent inpainting")."""


@dataclass(frozen=True)
class InpaintSettings:
    """layers: 0-based layers whose latents may be redrawn (None: all); fix_in_z: keep the fixed latents' z (`anchor_in_z`)
    instead of their u (the prior's coordinates); guidance: data-consistency Langevin K and s;
    temperature: tau of the free coordinates."""

    layers: tuple[int, ...] | None = None
    fix_in_z: bool = False
    guidance_steps: int = DEFAULT_GUIDANCE_STEPS
    guidance_step_size: float = DEFAULT_GUIDANCE_STEP_SIZE
    temperature: float = 1.0


@dataclass(frozen=True)
class Inpainting:
    """u `[B, D]` (the final latents), x_raw (their decode) and x_out (visible pixels pasted back), `[B, C, H, W]` in [-1, 1]."""

    u: Tensor
    x_raw: Tensor
    x_out: Tensor


def free_latent_mask(backbone: Backbone, pixel_mask: Tensor, layers: tuple[int, ...] | None) -> Tensor:
    """`[D]` 0/1: the latents whose footprint overlaps pixel_mask `[H, W]` (1 = to fill), within `layers` (0-based; None: all)."""
    footprint = backbone.latent_footprint_mask(pixel_mask.to(backbone.log_std_x.device))
    if layers is None:
        return footprint
    return footprint * backbone.layer_mask(set(layers), footprint.device)


def fill_masked(x: Tensor, pixel_mask: Tensor) -> Tensor:
    """x `[B, C, H, W]` with the masked pixels (pixel_mask `[H, W]`, 1 = masked) set to the mean of each image's visible pixels."""
    visible = 1 - pixel_mask.to(x)
    mean = (x * visible).flatten(2).sum(-1) / visible.sum()  # [B, C]
    return x * visible + mean[:, :, None, None] * (1 - visible)


@torch.no_grad()
def infer_latents(backbone: Backbone, x: Tensor, pixel_mask: Tensor) -> Tensor:
    """u_q = T^{-1}(posterior mean of q(z | x_fill)) `[B, D]` for x `[B, C, H, W]` (step 1 of the module docstring)."""
    z, _ = backbone.posterior(fill_masked(x, pixel_mask), None, sample=False)
    return backbone.z_to_u(z)


def paste_visible(x_raw: Tensor, x: Tensor, pixel_mask: Tensor) -> Tensor:
    """m * x_raw + (1 - m) * x: the decode on the masked pixels, the input elsewhere; `[B, C, H, W]`."""
    m = pixel_mask.to(x)
    return m * x_raw + (1 - m) * x


def visible_log_density(backbone: Backbone, neg_energy: NegEnergyOfZ | None, x: Tensor, pixel_mask: Tensor) -> LogDensity:
    """u `[B, D]` -> log p(x_vis | T(u)) + F(T(u)) - |u|^2/2 `[B]` (up to a constant): the posterior in u-space
    (`hebmctl.samplers.posterior`) with the backbone's likelihood of the visible pixels only (masked pixels are zeroed
    in both x and the likelihood's parameters, so they add a constant)."""
    visible = 1 - pixel_mask.to(x)

    def log_density(u: Tensor) -> Tensor:
        z = backbone.u_to_z(u)
        log_px = -backbone.recon_nll(x * visible, backbone.decode_params(z) * visible)  # masked pixels: a constant term
        energy = neg_energy(z) if neg_energy is not None else 0.0
        return log_px + energy - 0.5 * u.flatten(1).pow(2).sum(1)

    return log_density


def data_consistency(prior: Prior, x: Tensor, pixel_mask: Tensor, u: Tensor, latent_mask: Tensor, settings: InpaintSettings,
                     generator: torch.Generator) -> Tensor:
    """K Langevin steps (step s) of `visible_log_density` on the free coordinates (latent_mask `[D]`) of u `[B, D]` from u;
    the fixed coordinates never move. Returns `[B, D]`."""
    if settings.guidance_steps == 0:
        return u
    log_p = masked_log_density(visible_log_density(prior.backbone, prior.neg_energy_of_z(), x, pixel_mask), u, latent_mask)
    v, _ = langevin(log_p, u, settings.guidance_steps, settings.guidance_step_size, generator)
    return compose(u, v.detach(), latent_mask)


def anchor_in_z(backbone: Backbone, u: Tensor, u_q: Tensor, latent_mask: Tensor) -> Tensor:
    """Top-down replacement in z (our variant of step 3): u `[B, D]` -> u' whose free coordinates (latent_mask `[D]` = 1)
    are those of u and whose z = T(u') equals z_q = T(u_q) on the fixed coordinates. In a conditional hierarchy
    z_i = mu_i(z_{>i}) + sigma_i(z_{>i}) u_i, so a fixed u_i under redrawn parents is another z_i; here each fixed z_i is
    the inferred one and each free z_i is drawn around its new parents. Fixed point u' <- compose(T^{-1}(compose(z_q,
    T(u'))), u): pass k makes the top k groups exact, so L passes (L = layers) make every group exact."""
    with torch.no_grad():
        z_q, anchored = backbone.u_to_z(u_q), u
        for _ in range(backbone.num_layers):
            anchored = compose(backbone.z_to_u(compose(z_q, backbone.u_to_z(anchored), latent_mask)), u, latent_mask)
    return anchored


def inpaint(prior: Prior, x: Tensor, pixel_mask: Tensor, u_q: Tensor, latent_mask: Tensor, settings: InpaintSettings,
            generator: torch.Generator) -> Inpainting:
    """Steps 3-5 of the module docstring for images x `[B, C, H, W]` in [-1, 1], their inferred u_q `[B, D]`,
    pixel_mask `[H, W]` and latent_mask `[D]` (1 = free)."""
    u = prior.resample_masked(u_q, latent_mask, generator)
    u = compose(u_q, settings.temperature * u, latent_mask)
    u = anchor_in_z(prior.backbone, u, u_q, latent_mask) if settings.fix_in_z else u
    u = data_consistency(prior, x, pixel_mask, u, latent_mask, settings, generator)
    u = anchor_in_z(prior.backbone, u, u_q, latent_mask) if settings.fix_in_z else u  # the chain moved free parents
    with torch.no_grad():
        x_raw = prior.backbone.decode(prior.backbone.u_to_z(u)).clamp(-1, 1)
    return Inpainting(u, x_raw, paste_visible(x_raw, x, pixel_mask))
