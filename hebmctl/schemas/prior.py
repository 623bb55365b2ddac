"""Config of `hebmctl train-prior` and the manifest of a prior artifact."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from hebmctl.schemas.common import ManifestBase, StageConfig, StrictModel, split_csv

DEFAULT_LANGEVIN_STEPS = {"joint": 60, "diffusion": 30, "cooperative": 30}
DEFAULT_STEP_SIZE = {"joint": 0.1}
"""Joint-EBM's anchor is s = 0.4; on our Fashion-MNIST backbone it ran away (gap 0.3 -> 725 by step
1,300) while s = 0.1 with energy L2 0.1 trained stably with a flat 2,500-step profile
(docs/fashion-mnist.md)."""
DEFAULT_ENERGY_L2 = {"joint": 0.1, "diffusion": 0.0, "cooperative": 0.0}
DEFAULT_CONV_CHANNELS, DEFAULT_CONV_DEPTH = 64, 2
DEFAULT_LABEL_WEIGHT = 1.0
"""The cross-entropy weight of --labels: log p(u_0, y | u_1) = log p(u_0 | u_1) + log p(y | u_0), and softmax_y of the
level-0 density's own logits G(z, y, 0) / s_0^2 is p(y | u_0), so weight 1 is maximum likelihood of the joint."""
DEFAULT_MAX_ENERGY_GAP = {"joint": 100.0, "diffusion": 1e5, "cooperative": 1e5}
"""The runaway guard compares the gap in the units of each scheme's loss. Diffusion: mean((G_pos - G_neg) / s_t^2),
whose healthy batch-to-batch spread is large because s_0^2 ~ 1e-5 (MNIST vlae-small, 843 steps: median |gap| 102,
99th percentile 1,757, max 2,997; docs/results.md), so its threshold sits 30x above the healthy maximum."""


class TrainPriorConfig(StageConfig):
    """Learn an energy-based prior in u-space on a frozen backbone's cached latents."""

    run_defaults: ClassVar[dict[str, str]] = {"backbone": "backbone", "latents": "latents", "out": "priors/{name}"}
    unhashed: ClassVar[frozenset[str]] = frozenset({"run", "device", "compile", "tf32", "name", "out", "log_every", "checkpoint_every",
                                                    "keep_checkpoints"})
    hashed_when_set: ClassVar[frozenset[str]] = frozenset({"conv_channels", "conv_depth", "shared_noise", "tweedie", "labels",
                                                           "label_layers", "label_levels", "label_dropout", "label_weight",
                                                           "label_factors", "weight_decay", "lr_decay"})
    """Unset = DEFAULT_CONV_CHANNELS / DEFAULT_CONV_DEPTH, left unset so that priors written before spatial groups keep their "
        "fingerprints; shared_noise and tweedie (cooperative scheme), the label options, weight_decay and lr_decay likewise stay "
        "unset unless given."""

    backbone: Path = Field(None, description="Backbone folder (default: RUN/backbone).")
    latents: Path = Field(None, description="Latent cache folder (default: RUN/latents).")
    name: str = Field(None, description="Prior name (default: the scheme); the prior goes to RUN/priors/NAME unless --out is given.")
    out: Path = Field(None, description="Prior folder to write (default: RUN/priors/NAME).")
    scheme: Literal["joint", "diffusion", "cooperative"] = Field("diffusion", description="'joint': one EBM, Langevin from N(0, I) "
        "(Joint-EBM); 'diffusion': conditional EBMs along a short diffusion (Diff-EBM); 'cooperative': the diffusion scheme's EBMs "
        "with an initializer network that proposes each chain's start (CDRL).")
    T: int = Field(3, ge=1, description="Diffusion levels (diffusion scheme).")
    shared_noise: bool | None = Field(None, description="Cooperative scheme: draw the training pairs with one eps, u_t = abar_t u_0 + "
        "sbar_t eps and u_{t+1} = abar_{t+1} u_0 + sbar_{t+1} eps (CDRL's variance reduction; default true); false: the forward "
        "kernel, as the diffusion scheme.")
    tweedie: bool | None = Field(None, description="Cooperative scheme: after the last level, the noiseless Tweedie step "
        "u_0 <- u_0 + sigma_0^2 grad log p(u_0 | u_1) (CDRL; default false).")
    labels: bool | None = Field(None, description="Couple the class label at t = 0 (Diff-EBM sec. 3.3 / App. A.2): the energy "
        "outputs one logit per class F(z, y), the marginal logsumexp_y F(z, y) is the prior's density, and training adds the "
        "cross-entropy of softmax_y F(z, y) on the cached labels (default off; the diffusion and joint schemes).")
    label_layers: tuple[int, ...] | None = Field(None, description="With --labels: couple the label at these latent layers only (1 = "
        "bottom z1, comma-separated); the other layers keep one scalar output (default: every layer).")
    label_levels: Literal["0", "all"] | None = Field(None, description="With --labels, diffusion scheme: the levels the label couples "
        "at. '0' (default): t = 0 only, as Diff-EBM sec. 3.3; 'all' (a variant, 'all-level coupling'): every level t has its own "
        "F(z_t, y, t), trained with its own cross-entropy, and `sample --class` conditions every level of the reverse diffusion.")
    label_dropout: float | None = Field(None, ge=0, lt=1, description="With --labels: replace the label by a null class with this "
        "probability at t = 0, training F(z, null) for classifier-free guidance (CDRL sec. 3.5; e.g. 0.1; default: no null class).")
    label_weight: float | None = Field(None, gt=0, description="With --labels: weight of the cross-entropy term (default "
        f"{DEFAULT_LABEL_WEIGHT:g}: the loss is then the joint likelihood -log p(u_0, y | u_1), both terms in nats).")
    label_factors: tuple[int, ...] | None = Field(None, description="With --labels: the classes are a grid of factors with these "
        "sizes, y = (f1 * n2 + f2) * n3 + f3 ... (e.g. 10,3 for digit x colour; the product must be the number of classes). "
        "Each coupled row's training chain is then conditioned, with equal probability, on its class or on one of its factor "
        "values (the set of classes sharing it), so the factor experts that `sample --class 9+10+11` composes are trained "
        "targets (a variant; default: the class only).")
    schedule: Literal["drl", "cosine"] = Field("drl", description="Noise schedule of the diffusion scheme.")
    b2: float = Field(3e-5, gt=0, description="Diffusion scheme step-size scale: "
                                              "s_t^2 = (sigma_cum[t] / sigma_cum[0]) * b2 * sigma[t+1]^2.")
    langevin_steps: int = Field(None, ge=1, description="K, Langevin steps per training example (default: 60 joint, 30 diffusion).")
    step_size: float = Field(None, gt=0, description="Langevin step size s of the joint scheme (default 0.1; the anchor's 0.4 ran away on "
                                                     "Fashion-MNIST); the diffusion scheme derives s_t from b2.")
    width: int = Field(200, ge=1, description="Hidden width of each group's energy MLP.")
    depth: int = Field(2, ge=1, description="Hidden layers of each group's energy MLP.")
    activation: Literal["silu", "leaky_relu"] = Field("silu", description="Activation of the energy MLPs (leaky_relu has slope 0.2).")
    conv_channels: int | None = Field(None, ge=1, description="Channels of the conv energy net of each spatial latent group (nvae "
        "backbones; default 64).")
    conv_depth: int | None = Field(None, ge=1, description="Conv layers of each spatial group's energy net (default 2).")
    spectral_norm: bool = Field(False, description="Spectral normalisation on the energy MLPs' linear layers.")
    time_embed_dim: int = Field(64, ge=2, description="Size of the sinusoidal level embedding (diffusion scheme).")
    steps: int = Field(4000, ge=1, description="EBM parameter updates.")
    batch_size: int = Field(256, ge=1, description="Latents per update.")
    lr: float = Field(1e-4, gt=0, description="Adam learning rate of the EBM.")
    beta1: float = Field(0.5, ge=0, lt=1, description="Adam beta1.")
    weight_decay: float | None = Field(None, ge=0, description="L2 weight decay of the EBM's Adam (added to the gradient, as "
        "torch.optim.Adam's weight_decay; Diff-EBM's CIFAR-10 recipe: 3e-5; default 0).")
    lr_decay: float | None = Field(None, gt=0, le=1, description="Multiply the EBM's learning rate by this factor after every epoch "
        "(ceil(cached latents / --batch-size) updates): lr * lr_decay^epoch (Diff-EBM's CIFAR-10 recipe: 0.9; default 1, constant).")
    energy_l2: float = Field(None, ge=0, description="Weight of the regulariser mean(F_pos^2 + F_neg^2) (default: 0.1 joint, 0 diffusion).")
    grad_clip: float = Field(10.0, gt=0, description="Gradient-norm clip of the EBM update.")
    ema_decay: float = Field(0.999, ge=0, lt=1, description="EMA decay of the EBM weights; the EMA weights are the prior's output.")
    max_energy_gap: float = Field(None, gt=0, description="A batch whose positive-negative energy gap, in the units of the loss "
                                  "(joint: |mean F(pos) - mean F(neg)|; diffusion: |mean((G(pos) - G(neg)) / s_t^2)|), exceeds this "
                                  "counts as divergence (the chains no longer reach the model's high-density region), like a "
                                  "non-finite loss (default: 100 joint, 1e5 diffusion).")
    max_rollbacks: int = Field(3, ge=0, description="On divergence (non-finite loss or energy, or a runaway energy gap): roll back to the "
                                                    "last checkpoint with the learning rate halved, at most this many times, then stop.")
    checkpoint_every: int = Field(500, ge=1, description="Write a resumable checkpoint every N steps.")
    keep_checkpoints: int = Field(2, ge=1, description="Number of most recent checkpoints kept.")
    log_every: int = Field(50, ge=1, description="Append a line to metrics.jsonl every N steps.")
    seed: int = Field(0, description="Seed of every random number generator of the stage.")
    device: str = Field("auto", description="Torch device: 'auto' (CUDA when present, else CPU), 'cpu', 'cuda', ...")
    compile: Literal["auto", "on", "off"] = Field("auto", description="Capture the Langevin step in a CUDA graph (replayed each "
        "step; the same numbers as the eager loop): 'auto' on CUDA only, 'on' (an error without CUDA), 'off' the eager loop.")
    tf32: bool = Field(True, description="On CUDA, TF32 matmuls and convolutions (10-bit mantissa) throughout this stage: faster, "
        "and measured within the seed-to-seed spread (docs/scale.md). No effect on the CPU; --no-tf32 for full fp32.")

    _csv = field_validator("label_layers", "label_factors", mode="before")(lambda cls, v: split_csv(v))

    @model_validator(mode="after")
    def _label_options_need_labels(self) -> "TrainPriorConfig":
        given = [name for name in ("label_layers", "label_levels", "label_dropout", "label_weight", "label_factors")
                 if getattr(self, name) is not None]
        if given and not self.labels:
            flags = ", ".join("--" + name.replace("_", "-") for name in given)
            raise ValueError(f"{flags} only apply to a label-coupled prior: add --labels")
        if self.label_levels is not None and self.scheme != "diffusion":
            raise ValueError(f"--label-levels applies to the diffusion scheme's levels; --scheme {self.scheme} has none to choose")
        if self.label_layers is not None and (not self.label_layers or min(self.label_layers) < 1
                                              or len(set(self.label_layers)) != len(self.label_layers)):
            raise ValueError("--label-layers takes distinct layer numbers from 1 (the bottom layer z1), comma-separated, e.g. 3 or 2,3")
        if self.label_factors is not None and (len(self.label_factors) < 2 or min(self.label_factors) < 2):
            raise ValueError("--label-factors takes two or more factor sizes of at least 2, comma-separated, e.g. 10,3")
        return self

    @classmethod
    def _derived_defaults(cls, data: dict[str, Any]) -> dict[str, Any]:
        """K, s and the energy L2 weight depend on the scheme; the name defaults to the scheme."""
        scheme = data.get("scheme") or cls.model_fields["scheme"].default
        if data.get("langevin_steps") is None:
            data["langevin_steps"] = DEFAULT_LANGEVIN_STEPS.get(scheme, 30)  # an unknown scheme is rejected by validation
        if data.get("step_size") is None:
            data["step_size"] = DEFAULT_STEP_SIZE.get(scheme, 0.1)
        if data.get("energy_l2") is None:
            data["energy_l2"] = DEFAULT_ENERGY_L2.get(scheme, 0.0)
        if data.get("max_energy_gap") is None:
            data["max_energy_gap"] = DEFAULT_MAX_ENERGY_GAP.get(scheme, 100.0)
        data["name"] = data.get("name") or scheme
        return data


class LabelCoupling(StrictModel):
    """How a label-coupled prior's energy network is built and trained (train-prior --labels)."""

    n_classes: int = Field(ge=2, description="Classes C of the latent cache's labels (0..C-1).")
    label_groups: tuple[int, ...] = Field(description="0-based latent groups (layers) whose energy outputs one value per class.")
    null_class: bool = Field(description="True when trained with label dropout: the energy has one more output, F(z, null) = index C.")
    label_dropout: float = Field(ge=0, lt=1, description="Probability that a level-0 label was replaced by the null class.")
    label_weight: float = Field(gt=0, description="Weight of the cross-entropy term.")
    factor_sizes: tuple[int, ...] | None = Field(None, description="Sizes of the factors the classes are a grid of (train-prior "
        "--label-factors): training chains were also conditioned on factor values; absent: on the class only.")

    @property
    def n_outputs(self) -> int:
        """Outputs of each label group's head: C, plus the null class."""
        return self.n_classes + int(self.null_class)


class PriorManifest(ManifestBase):
    kind: Literal["prior"] = Field("prior", description="Artifact kind.")
    config: TrainPriorConfig = Field(description="The resolved stage config.")
    group_dims: tuple[int, ...] = Field(description="Flattened latent group sizes, bottom to top.")
    group_shapes: tuple[tuple[int, ...], ...] | None = Field(None, description="Latent group shapes, bottom to top ([d] or [c, h, w]); "
        "absent in priors written before spatial groups (vector groups).")

    def resolved_group_shapes(self) -> tuple[tuple[int, ...], ...]:
        return self.group_shapes if self.group_shapes is not None else tuple((d,) for d in self.group_dims)
    schedule: dict[str, Any] | None = Field(description="Diffusion schedule (alpha, sigma, alpha_cum, sigma_cum per level) for the "
        "diffusion scheme; None for joint.")
    step_sizes: list[float] = Field(description="Langevin step size per level s_t (diffusion, t = 0..T-1) or [s] (joint).")
    label_coupling: LabelCoupling | None = Field(None, description="Classes, coupled layers and label dropout of a prior trained "
        "with --labels; absent for unlabelled priors.")
    learned_jointly: bool | None = Field(None, description="True for a prior learned together with its backbone by `pretrain --prior "
        "joint` (no latent cache: config.latents is not read; config.steps and batch_size are the backbone's); absent for two-stage "
        "priors.")
