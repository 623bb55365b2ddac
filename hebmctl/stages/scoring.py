"""Likelihood scores L^{>k} of image sets under a backbone and its prior, for `eval ood` and `eval anomaly`.

Builds the pieces `hebmctl.metrics.likelihood.layer_scores` needs from the artifacts: the prior's
negative energy F(z) and its conditional sampler of z_{<=k} given z_{>k} (the same masked samplers
`hebmctl sample --hierarchical` uses). For the diffusion scheme F is the level-0 term of the
recovery likelihood, `F(z) = G(z, 0) / s_0^2` (DESIGN §3: log p(u_0 | u_1) without its kernel).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from hebmctl.data import to_unit_range
from hebmctl.errors import DataError
from hebmctl.io.console import progress_bar
from hebmctl.metrics.likelihood import NegEnergyOfZ, layer_scores
from hebmctl.schemas.common import InputRef
from hebmctl.schemas.sample import SampleConfig
from hebmctl.stages.artifacts import LoadedBackbone, LoadedPrior, load_backbone, load_prior
from hebmctl.stages.sample import Sampler, make_sampler, resample_masked


@dataclass(frozen=True)
class Scorer:
    backbone: LoadedBackbone
    sampler: Sampler
    neg_energy: NegEnergyOfZ | None

    @property
    def prior_kind(self) -> str:
        return self.sampler.kind

    def describe(self, seed: int) -> dict:
        """Every number of the conditional sampler (no temperature: scores use u as drawn) and the energy term."""
        return self.sampler.describe(temperature=1.0, seed=seed) | {"energy_in_score": self._energy_text()}

    def _energy_text(self) -> str:
        return {"gaussian": "none", "joint": "F(z)", "diffusion": "G(z, 0) / s_0^2"}[self.prior_kind]


def make_scorer(config, device: torch.device) -> tuple[Scorer, list[InputRef]]:
    """The scorer of an eval config (fields of `ScoreOptions`, optional sampler overrides) and its lineage."""
    backbone = load_backbone(config.backbone, device)
    inputs = [InputRef(role="backbone", path=str(config.backbone), kind="backbone", sha256=backbone.manifest_sha256)]
    prior_dir = config.prior_dir()
    prior = load_prior(prior_dir, backbone, device) if prior_dir is not None else None
    if prior is not None:
        inputs.append(InputRef(role="prior", path=str(prior_dir), kind="prior", sha256=prior.manifest_sha256))
    overrides = {k: getattr(config, k, None) for k in ("langevin_steps", "step_size", "step_scale")}
    sample_config = SampleConfig(run=config.run, backbone=config.backbone, prior=config.prior, out=Path(config.out), device=config.device, **overrides)
    sampler = make_sampler(sample_config, backbone, prior, device)
    return Scorer(backbone, sampler, _neg_energy_of_z(prior, sampler)), inputs


def _neg_energy_of_z(prior: LoadedPrior | None, sampler: Sampler) -> NegEnergyOfZ | None:
    if prior is None:
        return None
    if sampler.kind == "joint":
        return lambda z: prior.energy(z, None)
    s0_sq = float(sampler.geometry.step_sizes_sq[0])
    return lambda z: prior.energy(z, torch.zeros(z.shape[0], dtype=torch.long, device=z.device)) / s0_sq


def check_shape(scorer: Scorer, images: np.ndarray, spec: str) -> None:
    expected = tuple(scorer.backbone.manifest.image_shape)
    if tuple(images.shape[1:]) != expected:
        raise DataError(f"{spec} has images of shape {tuple(images.shape[1:])} (H, W, C) but the backbone was trained on {expected}. "
                        "Score a data set with the backbone's image size and channels.")


def score_images(scorer: Scorer, images: np.ndarray, ks: tuple[int, ...], draws: int, batch_size: int, seed: int, label: str,
                 terms: str = "full") -> dict[int, np.ndarray]:
    """L^{>k} `[N]` (nats) of uint8 images `[N, H, W, C]` for each k; batch b draws from a generator seeded by (seed, b)."""
    model, device = scorer.backbone.model, scorer.sampler.device
    parts: dict[int, list[np.ndarray]] = {k: [] for k in ks}
    resample = lambda u_fixed, mask, generator: resample_masked(scorer.sampler, u_fixed, mask, generator)  # noqa: E731
    with progress_bar() as bar:
        task = bar.add_task(f"score {label}", total=len(images), unit="img", info="")
        for start in range(0, len(images), batch_size):
            x = to_unit_range(images[start : start + batch_size]).to(device)
            generator = torch.Generator(device=device).manual_seed(seed * 1_000_003 + start)
            for k, values in layer_scores(model, x, ks, scorer.neg_energy, resample, generator, draws, terms).items():
                parts[k].append(values.cpu().double().numpy())
            bar.update(task, advance=x.shape[0])
    return {k: np.concatenate(v) for k, v in parts.items()}
