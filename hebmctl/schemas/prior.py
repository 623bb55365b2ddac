"""Config of `hebmctl train-prior` and the manifest of a prior artifact."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import Field

from hebmctl.schemas.common import ManifestBase, StageConfig

DEFAULT_LANGEVIN_STEPS = {"joint": 60, "diffusion": 30, "cooperative": 30}
DEFAULT_STEP_SIZE = {"joint": 0.1}
"""Joint-EBM's anchor is s = 0.4; on our Fashion-MNIST backbone it ran away (gap 0.3 -> 725 by step
1,300) while s = 0.1 with energy L2 0.1 trained stably with a flat 2,500-step profile
(docs/fashion-mnist.md)."""
DEFAULT_ENERGY_L2 = {"joint": 0.1, "diffusion": 0.0, "cooperative": 0.0}
DEFAULT_CONV_CHANNELS, DEFAULT_CONV_DEPTH = 64, 2
DEFAULT_MAX_ENERGY_GAP = {"joint": 100.0, "diffusion": 1e5, "cooperative": 1e5}
"""The runaway guard compares the gap in the units of each scheme's loss. Diffusion: mean((G_pos - G_neg) / s_t^2),
whose healthy batch-to-batch spread is large because s_0^2 ~ 1e-5 (MNIST vlae-small, 843 steps: median |gap| 102,
99th percentile 1,757, max 2,997; docs/results.md), so its threshold sits 30x above the healthy maximum."""


class TrainPriorConfig(StageConfig):
    """Learn an energy-based prior in u-space on a frozen backbone's cached latents."""

    run_defaults: ClassVar[dict[str, str]] = {"backbone": "backbone", "latents": "latents", "out": "priors/{name}"}
    unhashed: ClassVar[frozenset[str]] = frozenset({"run", "device", "compile", "name", "out", "log_every", "checkpoint_every",
                                                    "keep_checkpoints"})
    hashed_when_set: ClassVar[frozenset[str]] = frozenset({"conv_channels", "conv_depth", "shared_noise", "tweedie"})
    """Unset = DEFAULT_CONV_CHANNELS / DEFAULT_CONV_DEPTH, left unset so that priors written before spatial groups keep their "
        "fingerprints; shared_noise and tweedie (cooperative scheme) likewise stay unset unless given."""

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
    learned_jointly: bool | None = Field(None, description="True for a prior learned together with its backbone by `pretrain --prior "
        "joint` (no latent cache: config.latents is not read; config.steps and batch_size are the backbone's); absent for two-stage "
        "priors.")
