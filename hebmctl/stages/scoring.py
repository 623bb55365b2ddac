"""Detection scores of image sets under a backbone and its prior, for `eval ood` and `eval anomaly`.

The prior object (`hebmctl.priors`) owns its scores (`Prior.detection_scores`): for the Gaussian and
joint priors the likelihood scores `-L>k`, `LLR>k` (Joint-EBM eq. 20-21, full terms) and `-Lprior>k`
(the prior's terms only), z_{<=k} drawn by the prior's masked sampler (the one `hebmctl sample
--hierarchical` uses); for the diffusion prior Diff-EBM's own score `DiffEBM>k` (sec. 5.2), since its
level-0 energy is not a marginal density (DESIGN §3 "Scores"). Every name: higher = more anomalous.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from hebmctl import priors
from hebmctl.data import to_unit_range
from hebmctl.errors import DataError
from hebmctl.io.console import progress_bar
from hebmctl.schemas.common import InputRef
from hebmctl.schemas.pretrain import POSTERIOR_LANGEVIN_DEFAULTS
from hebmctl.stages.artifacts import LoadedBackbone, load_backbone, open_prior


@dataclass(frozen=True)
class Scorer:
    backbone: LoadedBackbone
    prior: priors.Prior

    @property
    def prior_kind(self) -> str:
        return self.prior.kind

    def describe(self, seed: int) -> dict:
        """Every number of the conditional sampler (no temperature: scores use u as drawn) and the energy term."""
        return self.prior.describe(temperature=1.0, seed=seed) | {"energy_in_score": self.prior.energy_in_score}


def make_scorer(config, device: torch.device) -> tuple[Scorer, list[InputRef]]:
    """The scorer of an eval config (fields of `ScoreOptions`, optional sampler overrides) and its lineage."""
    backbone = load_backbone(config.backbone, device)
    inputs = [InputRef(role="backbone", path=str(config.backbone), kind="backbone", sha256=backbone.manifest_sha256)]
    options = priors.SamplingOptions(*(getattr(config, k, None) for k in ("langevin_steps", "step_size", "step_scale")))
    prior, prior_inputs = open_prior(config.prior_dir(), backbone, device, options)
    return Scorer(backbone, prior), inputs + prior_inputs


def check_shape(scorer: Scorer, images: np.ndarray, spec: str) -> None:
    expected = tuple(scorer.backbone.manifest.image_shape)
    if tuple(images.shape[1:]) != expected:
        raise DataError(f"{spec} has images of shape {tuple(images.shape[1:])} (H, W, C) but the backbone was trained on {expected}. "
                        "Score a data set with the backbone's image size and channels.")


def posterior_langevin(config) -> priors.PosteriorLangevin | None:
    """The posterior Langevin of a score config (`ScoreOptions`): None unless --posterior-langevin-steps is given."""
    if config.posterior_langevin_steps is None:
        return None
    return priors.PosteriorLangevin(config.posterior_langevin_steps, config.posterior_step_size or POSTERIOR_LANGEVIN_DEFAULTS["posterior_step_size"])

TERMS_OF = {"both": ("full", "prior"), "full": ("full",), "prior": ("prior",), "latent": ("prior",)}
"""The config's `terms` -> the term sets scored ('latent' is the old name of 'prior')."""


def score_images(scorer: Scorer, images: np.ndarray, ks: tuple[int, ...], draws: int, batch_size: int, seed: int, label: str,
                 terms: str = "both", posterior: priors.PosteriorLangevin | None = None) -> dict[str, np.ndarray]:
    """Detection scores by name (`Prior.detection_scores`), each `[N]`, of uint8 images `[N, H, W, C]`; batch b draws
    from a generator seeded by (seed, b)."""
    device, prior = scorer.prior.device, scorer.prior
    parts: dict[str, list[np.ndarray]] = {}
    with progress_bar() as bar:
        task = bar.add_task(f"score {label}", total=len(images), unit="img", info="")
        for start in range(0, len(images), batch_size):
            x = to_unit_range(images[start : start + batch_size]).to(device)
            generator = torch.Generator(device=device).manual_seed(seed * 1_000_003 + start)
            for name, values in prior.detection_scores(x, ks, generator, draws, TERMS_OF[terms], posterior).items():
                parts.setdefault(name, []).append(values.cpu().double().numpy())
            bar.update(task, advance=x.shape[0])
    return {k: np.concatenate(v) for k, v in parts.items()}
