"""Likelihood scores of images under a backbone with a (Gaussian or EBM) prior (DESIGN §3).

`L^{>k}(x) = log p(x | z) + log p_Gauss(z) + F(z)` with `z_{>k}` drawn from `q(z | x)` and
`z_{<=k}` drawn from the prior conditioned on the fixed `z_{>k}` (Joint-EBM eq. 20); `k = 0` keeps
the whole posterior draw. `LLR^{>k} = L^{>0} - L^{>k}` (eq. 21). `log p_Gauss(z)` is the backbone's
conditional Gaussian hierarchy `prod_i p(z_i | z_{i+1})`, `F` the EBM's negative energy (0 for the
Gaussian prior); the EBM's normaliser is a constant and cancels in every ranking.

Layers are numbered from the bottom: z_1 .. z_L. Because `T` is triangular top-down (z_i depends on
u_i, ..., u_L), fixing z_{>k} is the same as fixing u_{>k}, so the conditional draw is a masked
resampling of u_1 .. u_k (see `hebmctl.samplers.conditional`).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from hebmctl.models.backbone import Backbone

NegEnergyOfZ = Callable[[Tensor], Tensor]
"""z `[B, D]` -> F(z) `[B]`."""
ConditionalResampler = Callable[[Tensor, Tensor, torch.Generator], Tensor]
"""(u_fixed `[B, D]`, mask `[D]` with 1 = resample, generator) -> u `[B, D]` with the masked part redrawn."""
PosteriorRefiner = Callable[[Tensor, torch.Generator], Tensor]
"""(u_q `[B, D]`, generator) -> u `[B, D]`: a better posterior sample started from q's draw (e.g. posterior Langevin)."""


def log_gaussian_prior(model: Backbone, z: Tensor) -> Tensor:
    """log p_Gauss(z) = sum_i log N(z_i; mu_i(z_{>i}), sigma_i(z_{>i})^2), top layer N(0, I): `[B, D]` -> `[B]`."""
    return model.log_prior_gauss(z)


SCORE_TERMS = ("full", "prior")
"""'full': L = log p(x | z) + log p_Gauss(z) + F(z) (DESIGN §3, Joint-EBM eq. 20), the only score named
L^{>k}; 'prior': Lprior = log p_Gauss(z) + F(z), the prior's judgement alone (drops the pixel likelihood,
which favours simple images such as digit 1). 'latent' is the old name of 'prior' (still accepted)."""

SCORE_NAMES = {"full": "L", "prior": "Lprior"}
"""The name each term set carries in result keys, tables and plots (`-L>k`, `-Lprior>k`)."""


def _canonical_terms(terms: str) -> str:
    terms = "prior" if terms == "latent" else terms
    if terms not in SCORE_TERMS:
        raise ValueError(f"terms must be one of {SCORE_TERMS}, got {terms!r}")
    return terms


def log_joint(model: Backbone, x: Tensor, z: Tensor, neg_energy: NegEnergyOfZ | None, terms: str = "full") -> Tensor:
    """L = log p(x | z) + log p_Gauss(z) + F(z) (`terms="full"`, eq. 20) or Lprior = log p_Gauss(z) + F(z)
    (`terms="prior"`) for images x `[B, C, H, W]` in [-1, 1] and z `[B, D]` -> `[B]` nats."""
    value = log_gaussian_prior(model, z)
    if _canonical_terms(terms) == "full":
        value = value - model.recon_nll(x, model.decode_params(z))
    return value if neg_energy is None else value + neg_energy(z)


def layer_mask(model: Backbone, k: int, device: torch.device) -> Tensor:
    """`[D]` mask with 1 on the coordinates of layers z_1 .. z_k (the ones drawn from the prior)."""
    return model.layer_mask(range(k), device)


@torch.no_grad()
def posterior_u(model: Backbone, features, generator: torch.Generator) -> Tensor:
    """One posterior draw z ~ q(z | x) mapped to u-space: the encoder's features -> u `[B, D]`."""
    z, _ = model.posterior_from_features(features, generator, sample=True)
    return model.z_to_u(z)


def layer_scores(
    model: Backbone,
    x: Tensor,
    ks: tuple[int, ...],
    neg_energy: NegEnergyOfZ | None,
    resample: ConditionalResampler,
    generator: torch.Generator,
    draws: int = 1,
    terms: str = "full",
) -> dict[int, Tensor]:
    """L^{>k}(x) (or Lprior^{>k} for `terms="prior"`) for each k in `ks`: x `[B, C, H, W]` -> {k: `[B]`},
    the mean over `draws` draws (see `layer_score_terms`)."""
    return layer_score_terms(model, x, ks, neg_energy, resample, generator, draws, (terms,))[_canonical_terms(terms)]


def layer_score_terms(
    model: Backbone,
    x: Tensor,
    ks: tuple[int, ...],
    neg_energy: NegEnergyOfZ | None,
    resample: ConditionalResampler,
    generator: torch.Generator,
    draws: int = 1,
    terms: tuple[str, ...] = SCORE_TERMS,
    refine: PosteriorRefiner | None = None,
) -> dict[str, dict[int, Tensor]]:
    """{terms: {k: `[B]`}}: L^{>k}(x) ('full') and Lprior^{>k}(x) ('prior') on the same draws, x `[B, C, H, W]`.

    Each draw takes one posterior sample u ~ q (in u-space; with `refine`, moved on by it, e.g. posterior
    Langevin, Joint-EBM §3.2) shared by every k, then redraws
    u_1 .. u_k with `resample` (nothing for k = 0) and scores z = T(u): Lprior = log p_Gauss(z) + F(z),
    L = Lprior + log p(x | z) (eq. 20). Both term sets share the draws, so asking for both costs one decode more.
    """
    terms = tuple(dict.fromkeys(_canonical_terms(t) for t in terms))
    if any(k < 0 or k > model.num_layers for k in ks):
        raise ValueError(f"k must be in 0..{model.num_layers}, got {ks}")
    with torch.no_grad():
        features = model.encode(x)
    totals = {t: {k: torch.zeros(x.shape[0], device=x.device) for k in ks} for t in terms}
    for _ in range(draws):
        u_q = posterior_u(model, features, generator)
        if refine is not None:
            u_q = refine(u_q, generator)
        for k in ks:
            u = u_q if k == 0 else resample(u_q, layer_mask(model, k, x.device), generator)
            with torch.no_grad():
                z = model.u_to_z(u)
                prior_terms = log_joint(model, x, z, neg_energy, "prior")
                for t in terms:
                    totals[t][k] += prior_terms - model.recon_nll(x, model.decode_params(z)) if t == "full" else prior_terms
    return {t: {k: total / draws for k, total in per_k.items()} for t, per_k in totals.items()}


def likelihood_detection_scores(
    model: Backbone,
    x: Tensor,
    ks: tuple[int, ...],
    neg_energy: NegEnergyOfZ | None,
    resample: ConditionalResampler,
    generator: torch.Generator,
    draws: int = 1,
    terms: tuple[str, ...] = SCORE_TERMS,
    refine: PosteriorRefiner | None = None,
) -> dict[str, Tensor]:
    """Detection scores `[B]` (higher = more anomalous) by name: `-L>k` and `LLR>k = L>0 - L>k` (k >= 1,
    eq. 21) for the full terms, `-Lprior>k` for the prior's terms (no likelihood ratio: without log p(x | z)
    it is not the eq. 21 ratio). k = 0 is always scored when an LLR is asked for."""
    wanted = tuple(sorted(set(ks) | ({0} if "full" in terms else set())))
    values = layer_score_terms(model, x, wanted, neg_energy, resample, generator, draws, terms, refine)
    scores = {}
    for t, per_k in values.items():
        scores |= {f"-{SCORE_NAMES[t]}>{k}": -per_k[k] for k in ks}
        if t == "full":
            scores |= {f"LLR>{k}": per_k[0] - per_k[k] for k in ks if k >= 1}
    return scores
