"""Config of `hebmctl pretrain` and the manifest of a backbone artifact."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from hebmctl.schemas.common import ManifestBase, StageConfig, absolute_data_spec, split_csv

FAMILY_DEFAULTS: dict[str, dict[str, Any]] = {
    "hvae": {"channels": 32, "free_bits": 0.25, "latent_dims": (64, 32, 16)},
    "vlae": {"channels": 32, "free_bits": 0.25, "latent_dims": (4, 4, 4)},
    "nvae": {"channels": 16, "free_bits": 0.0, "groups_per_scale": (2, 2), "group_channels": 4, "cells_per_group": 1},
}
"""Defaults of the options only one family reads, filled in when that family is chosen."""

JOINT_DEFAULTS: dict[str, Any] = {
    "prior_langevin_steps": 60, "prior_step_size": 0.1, "energy_width": 200, "energy_depth": 2, "energy_lr": 1e-4, "energy_beta1": 0.5,
    "energy_l2": 0.1, "energy_grad_clip": 10.0, "max_energy_gap": 100.0, "max_rollbacks": 3,
}
"""Defaults of --prior joint's options (those of train-prior's joint scheme), filled in only with --prior joint."""
POSTERIOR_LANGEVIN_DEFAULTS: dict[str, Any] = {"posterior_init": "q", "posterior_langevin_steps": 20, "posterior_step_size": 0.1}
JOINT_ONLY = frozenset(JOINT_DEFAULTS) | {"posterior", "prior_name", "prior_out"} | frozenset(POSTERIOR_LANGEVIN_DEFAULTS)
STABILISER_OPTIONS = frozenset({"likelihood", "mixture_components", "kl_balance", "spectral_reg", "precision"})
OFF_VALUES: dict[str, Any] = {"likelihood": "gaussian", "kl_balance": False, "spectral_reg": 0.0, "precision": "fp32"}
"""Values that spell out the default of an option hashed only when set: stored as unset, so the fingerprint is the default's."""
MIXTURE_COMPONENTS = 5


class PretrainConfig(StageConfig):
    """Train a hierarchical VAE backbone on a data set."""

    run_defaults: ClassVar[dict[str, str]] = {"out": "backbone"}

    out: Path = Field(None, description="Backbone folder to write (default: RUN/backbone).")
    data: str = Field("builtin:mnist-10k", description="Data spec: builtin:mnist-10k, builtin:shapes, builtin:shapes-64, mnist:DIR, "
        "fashion-mnist:DIR, cifar10:PATH, folder:PATH, npz:PATH, or pooled:heldout=D,seed=S:BASE (the anchors' anomaly protocol: train "
        "on a seeded 80 % of BASE's pooled images of every class but D; docs/eval.md).")
    exclude_classes: tuple[int, ...] = Field((), description="Class ids left out of the training split, comma-separated (test-split "
        "anomaly protocol); a class of the data set that the training split lacks anyway is accepted.")
    limit: int | None = Field(None, ge=1, description="Use only N training images after exclusion (seeded random, stratified by class).")
    backbone: Literal["hvae", "nvae", "vlae"] = Field(
        "hvae",
        description="Backbone family: 'hvae' (vector groups, conditional hierarchy, decoder reads z_1), 'nvae' (spatial groups on a "
        "top-down path, every group reaches the pixels), 'vlae' (independent vector groups injected at different generator depths).",
    )
    latent_dims: tuple[int, ...] | None = Field(None, description="hvae, vlae: latent group sizes, bottom (z_1) to top (z_L), "
                                                "comma-separated. Default 64,32,16 (hvae), 4,4,4 (vlae: with 64,32,16 the bottom group "
                                                "took everything and the top collapsed).")
    channels: int = Field(None, ge=4, description="Width of the first conv layer (hvae, vlae: doubled at each of the two down-samplings; "
        "nvae: every layer). Default 32 (hvae, vlae), 16 (nvae).")
    mlp_hidden: int = Field(256, ge=8, description="hvae, vlae: hidden width of the MLPs between latent groups.")
    groups_per_scale: tuple[int, ...] | None = Field(
        None, description="nvae: latent groups per scale, top (lowest resolution) first, comma-separated; S entries put the latents at "
            "H/2^S .. H/2 (default 2,2)."
    )
    group_channels: int | None = Field(None, ge=1, description="nvae: channels of each spatial latent group (default 4).")
    cells_per_group: int | None = Field(None, ge=0, description="nvae: residual cells after each merged group (default 1).")
    likelihood: Literal["gaussian", "logistic-mixture"] | None = Field(None, description="Output likelihood p(x|z): 'gaussian' "
        "(default: one shared std, calibrated in closed form) or 'logistic-mixture' (discretised mixture of logistics on the 8-bit "
        "bins, PixelCNN++; colour channels independent).")
    mixture_components: int | None = Field(None, ge=1, description="--likelihood logistic-mixture: logistics per pixel and channel "
        "(default 5).")
    kl_balance: bool | None = Field(None, description="NVAE's KL balancing: during the KL warm-up, weight each group's KL by a "
        "coefficient proportional to its KL per dimension (mean 1 over groups), so that no group is switched off early. Default: off.")
    spectral_reg: float | None = Field(None, ge=0, description="NVAE's spectral regularisation: add LAMBDA * sum of the largest "
        "singular values of every convolution's weight matrix (one power iteration per step). Default: off.")
    precision: Literal["fp32", "bf16"] | None = Field(None, description="'fp32' (default) or 'bf16': the forward pass under bfloat16 "
        "autocast (CUDA only; refused on the CPU).")
    inference: Literal["top-down", "bottom-up"] = Field("top-down", description="q(z|x) factorisation: 'top-down' q(z_L|x) prod "
        "q(z_i|z_{i+1},x), or 'bottom-up' q(z_1|x) prod q(z_{i+1}|z_i) (Joint-EBM eq. 4).")
    steps: int = Field(6000, ge=1, description="Optimizer steps.")
    batch_size: int = Field(128, ge=1, description="Images per step.")
    lr: float = Field(1e-3, gt=0, description="Peak AdamW learning rate (cosine decay to 10% over the run).")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay.")
    grad_clip: float = Field(100.0, gt=0, description="Gradient-norm clip.")
    skip_grad_norm: float | None = Field(None, gt=0, description="Skip an update whose gradient norm (before clipping) exceeds this, or "
        "is not finite (NVAE / VDVAE); skipped updates are counted, and a run that skips nearly every update stops with a message. "
        "Default: off.")
    ema_decay: float = Field(0.999, ge=0, lt=1, description="Decay of the exponential moving average of the weights; the EMA weights are "
        "the backbone's output.")
    kl_warmup_steps: int = Field(1000, ge=0, description="Steps over which the KL weight rises linearly from 0 to 1.")
    free_bits: float = Field(None, ge=0, description="Free bits in nats per latent dimension, applied per layer: the KL of layer i is "
        "floored at free_bits * dim_i in the loss. Default 0.25 (hvae, vlae), 0 (nvae, whose thousands of spatial dimensions would make "
        "the floor hundreds of nats).")
    prior: Literal["gaussian", "joint"] | None = Field(None, description="'gaussian' (default): train the backbone alone; 'joint': "
        "train the backbone and an EBM prior in u-space together (Joint-EBM eq. 15-19) and also write the prior to RUN/priors/"
        "PRIOR_NAME.")
    posterior: Literal["q", "langevin"] | None = Field(None, description="--prior joint: posterior draws from q (variational learning, "
        "default) or by short-run Langevin on log p(x|z) + F(z) + log p_Gauss(z) in u-space (MLE, Joint-EBM sec. 3.2).")
    posterior_init: Literal["q", "noise"] | None = Field(None, description="--posterior langevin: start the chains at q's draw "
        "(default; q keeps learning by eq. 19) or at N(0, I).")
    posterior_langevin_steps: int | None = Field(None, ge=1, description="--posterior langevin: K (default 20).")
    posterior_step_size: float | None = Field(None, gt=0, description="--posterior langevin: step size s (default 0.1).")
    prior_name: str | None = Field(None, description="--prior joint: name of the prior written next to the backbone (default "
        "joint-learned).")
    prior_out: Path | None = Field(None, description="--prior joint: prior folder to write (default: RUN/priors/PRIOR_NAME).")
    prior_langevin_steps: int | None = Field(None, ge=1, description="--prior joint: K of the prior Langevin negatives (default 60).")
    prior_step_size: float | None = Field(None, gt=0, description="--prior joint: step size s of the prior Langevin negatives "
        "(default 0.1, as train-prior's joint scheme; the anchor's 0.4 ran away there).")
    energy_width: int | None = Field(None, ge=1, description="--prior joint: hidden width of each group's energy MLP (default 200).")
    energy_depth: int | None = Field(None, ge=1, description="--prior joint: hidden layers of each group's energy MLP (default 2).")
    energy_lr: float | None = Field(None, gt=0, description="--prior joint: Adam learning rate of the EBM (default 1e-4).")
    energy_beta1: float | None = Field(None, ge=0, lt=1, description="--prior joint: Adam beta1 of the EBM (default 0.5).")
    energy_l2: float | None = Field(None, ge=0, description="--prior joint: weight of mean(F_pos^2 + F_neg^2), which moves the EBM "
        "only (default 0.1).")
    energy_grad_clip: float | None = Field(None, gt=0, description="--prior joint: gradient-norm clip of the EBM (default 10).")
    max_energy_gap: float | None = Field(None, gt=0, description="--prior joint: a batch whose |mean F(pos) - mean F(neg)| exceeds this "
        "counts as divergence (default 100).")
    max_rollbacks: int | None = Field(None, ge=0, description="--prior joint: on divergence roll back to the last checkpoint with both "
        "learning rates halved, at most this many times (default 3).")
    checkpoint_every: int = Field(500, ge=1, description="Write a resumable checkpoint every N steps.")
    keep_checkpoints: int = Field(2, ge=1, description="Number of most recent checkpoints kept.")
    log_every: int = Field(50, ge=1, description="Append a line to metrics.jsonl every N steps.")
    eval_limit: int | None = Field(None, ge=1, description="Evaluate on N test images (seeded random, stratified by class; default: all).")
    seed: int = Field(0, description="Seed of every random number generator of the stage.")
    device: str = Field("auto", description="Torch device: 'auto' (CUDA when present, else CPU), 'cpu', 'cuda', ...")

    unhashed: ClassVar[frozenset[str]] = frozenset({"run", "device", "log_every", "checkpoint_every", "keep_checkpoints", "prior_out",
                                                       "prior_name"})
    hashed_when_set: ClassVar[frozenset[str]] = frozenset({"groups_per_scale", "group_channels", "cells_per_group", "skip_grad_norm"}
                                                          | JOINT_ONLY - {"prior_out", "prior_name"} | {"prior"} | STABILISER_OPTIONS)
    """Fields added after earlier backbones (the nvae family's, --prior joint's, the likelihood and stabilisers): hashed only when
    set, so the fingerprints of earlier backbones stay valid."""
    hashed_as_default: ClassVar[frozenset[str]] = frozenset({"eval_limit"})  # an evaluation setting: changing it does not retrain

    _data = field_validator("data", mode="before")(lambda cls, v: absolute_data_spec(v))
    _csv = field_validator("exclude_classes", "latent_dims", "groups_per_scale", mode="before")(lambda cls, v: split_csv(v))

    @classmethod
    def _derived_defaults(cls, data: dict[str, Any]) -> dict[str, Any]:
        """The chosen family's own defaults for its options (FAMILY_DEFAULTS) where they are not given."""
        family = data.get("backbone") or cls.model_fields["backbone"].default
        if data.get("prior") == "gaussian":
            data["prior"] = None  # the default, spelled out: same fingerprint as leaving it unset
        for key, off in OFF_VALUES.items():
            if data.get(key) == off:
                data[key] = None
        if data.get("likelihood") == "logistic-mixture" and data.get("mixture_components") is None:
            data["mixture_components"] = MIXTURE_COMPONENTS
        if data.get("prior") == "joint":
            data = cls._joint_defaults(data)
        for key, value in FAMILY_DEFAULTS.get(family, {}).items():
            if data.get(key) is None:
                data[key] = value
        return data

    @classmethod
    def _joint_defaults(cls, data: dict[str, Any]) -> dict[str, Any]:
        """--prior joint: its options' defaults, and free bits 0 (a KL floor would drop eq. 18's positive phase of a layer while
        its negative phase still acts: the two phases would no longer balance)."""
        data.update({k: v for k, v in JOINT_DEFAULTS.items() if data.get(k) is None})
        data["posterior"] = data.get("posterior") or "q"
        if data["posterior"] == "langevin":
            data.update({k: v for k, v in POSTERIOR_LANGEVIN_DEFAULTS.items() if data.get(k) is None})
        data["prior_name"] = data.get("prior_name") or "joint-learned"
        if data.get("prior_out") is None:
            data["prior_out"] = Path(data.get("run") or cls.model_fields["run"].default) / "priors" / data["prior_name"]
        if data.get("free_bits") is None:
            data["free_bits"] = 0.0
        return data

    @model_validator(mode="after")
    def _joint_options_need_joint_prior(self) -> PretrainConfig:
        if self.prior != "joint":
            given = sorted(k for k in JOINT_ONLY if getattr(self, k) is not None)
            if given:
                raise ValueError(f"{', '.join(given)} apply to --prior joint only")
        elif self.free_bits > 0:
            raise ValueError("--prior joint needs --free-bits 0: a KL floor drops eq. 18's positive phase of a layer while its negative "
                             "phase still acts")
        if self.prior == "joint" and any(getattr(self, k) is not None for k in ("kl_balance", "spectral_reg", "precision")):
            raise ValueError("kl_balance, spectral_reg and precision apply to the backbone alone (--prior gaussian) for now")
        if self.mixture_components is not None and self.likelihood != "logistic-mixture":
            raise ValueError("mixture_components applies to --likelihood logistic-mixture only")
        if self.posterior != "langevin" and any(getattr(self, k) is not None for k in POSTERIOR_LANGEVIN_DEFAULTS):
            raise ValueError("posterior_init, posterior_langevin_steps and posterior_step_size apply to --posterior langevin only")
        return self

    @field_validator("latent_dims")
    @classmethod
    def _positive_dims(cls, dims: tuple[int, ...] | None) -> tuple[int, ...] | None:
        if dims is not None and (len(dims) < 1 or any(d < 1 for d in dims)):
            raise ValueError("needs at least one group size, each a positive integer, e.g. 64,32,16")
        return dims


class BackboneManifest(ManifestBase):
    kind: Literal["backbone"] = Field("backbone", description="Artifact kind.")
    config: PretrainConfig = Field(description="The resolved stage config.")
    image_shape: tuple[int, int, int] = Field(description="(H, W, C) of the images the backbone was trained on.")
    group_dims: tuple[int, ...] = Field(description="Flattened latent group sizes, bottom to top.")
    group_shapes: tuple[tuple[int, ...], ...] | None = Field(None, description="Latent group shapes, bottom to top: [d] (vector) or [c, "
        "h, w] (spatial); absent in backbones written before the nvae family (vector groups).")
