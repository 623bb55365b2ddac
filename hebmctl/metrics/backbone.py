"""Backbone quality on a data split: reconstruction MSE, ELBO, KL per layer, active units."""

from __future__ import annotations

import math

import numpy as np
import torch

from hebmctl.data import to_unit_range
from hebmctl.models.backbone import Backbone

ACTIVE_UNIT_THRESHOLD = 0.01
"""A latent unit is active when Cov_x(E_q[u | x]) exceeds this (Burda et al., 2016)."""


@torch.no_grad()
def evaluate_backbone(model: Backbone, images: np.ndarray, device: torch.device, batch_size: int = 500, seed: int = 0) -> dict:
    """Test-split metrics of a backbone on uint8 images `[N, H, W, C]`.

    - `recon_mse`: per-pixel MSE on the [-1, 1] scale of the decoder mean at the posterior means.
    - `elbo_nats`: mean one-sample ELBO per image (nats) with the backbone's own likelihood (the Gaussian's is a
      continuous density on [-1, 1], the logistic mixture's a probability of the 8-bit bin).
    - `elbo_bpd_discrete`: minus the same one-sample ELBO with -log p(x | z) replaced by -log P(8-bit bin of x | z)
      (`Backbone.discrete_nll`), in bits per dimension: the scale on which likelihoods compare.
    - `kl_per_layer_nats`: mean KL per layer, bottom to top.
    - `active_units`: per layer, units whose posterior-mean u varies across images by more than
      ACTIVE_UNIT_THRESHOLD (posterior means propagated through the inference network, in u-space).
    """
    model.eval()
    generator = torch.Generator(device=device).manual_seed(seed)
    sq_err, n_pixels, elbo_sum, kl_sum, n = 0.0, 0, 0.0, torch.zeros(model.num_layers, dtype=torch.float64), 0
    discrete_sum = 0.0
    u_means = []
    for start in range(0, len(images), batch_size):
        x = to_unit_range(images[start : start + batch_size]).to(device)
        z_mean, _ = model.posterior(x, None, sample=False)
        x_rec = model.decode(z_mean)
        sq_err += float(((x_rec.clamp(-1, 1) - x) ** 2).sum())
        n_pixels += x.numel()
        u_means.append(model.z_to_u(z_mean).cpu())
        terms = model.elbo_terms(x, generator)
        elbo_sum += float(-(terms.recon_nll + terms.kl.sum(-1)).sum())
        discrete_sum += float((model.discrete_nll(x, terms.params) + terms.kl.sum(-1)).sum())
        kl_sum += terms.kl.sum(0).double().cpu()
        n += x.shape[0]
    variance = torch.cat(u_means).var(dim=0)
    active = [int((group > ACTIVE_UNIT_THRESHOLD).sum()) for group in model.split_groups(variance)]
    return {
        "recon_mse": sq_err / n_pixels,
        "elbo_nats": elbo_sum / n,
        "elbo_bpd_discrete": discrete_sum / n / (math.prod(model.image_shape) * math.log(2)),
        "kl_per_layer_nats": [float(k) / n for k in kl_sum],
        "active_units": active,
        "n_images": n,
    }
