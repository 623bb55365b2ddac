"""Stage `pretrain`: train the hierarchical VAE backbone (DESIGN §1, issue 2).

Loss per batch (negative ELBO with KL warm-up and per-layer free bits):
    recon_nll + beta(step) * sum_i gamma_i max(KL_i, free_bits * dim_i) + lambda * sum_j s_j,   beta rising 0 -> 1,
with gamma_i = 1, or NVAE's KL-balancing coefficients while beta < 1 (--kl-balance), and lambda * sum_j s_j NVAE's
spectral regulariser (--spectral-reg LAMBDA; 0 by default); hebmctl.models.stabilisers.
Writes `weights.safetensors` (EMA weights), `recon_grid.png`, `prior_samples.png`,
`metrics.jsonl`, then `manifest.json`. Re-running the same command resumes from the newest
checkpoint; a complete, up-to-date backbone is left as it is.
"""

from __future__ import annotations

import copy
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from hebmctl import dist, priors
from hebmctl.data import ImageSet, from_unit_range, load_split, to_unit_range
from hebmctl.data.readers import describe_split
from hebmctl.data.subsets import subset_positions
from hebmctl.errors import ArtifactError, ConfigError, DataError, DivergenceError, HebmctlError
from hebmctl.io.checkpoints import TrainingState, latest_checkpoint, load_checkpoint, restore_log, save_checkpoint
from hebmctl.io.console import append_jsonl, console, progress_bar, truncate_jsonl
from hebmctl.io.hashing import sha256_file
from hebmctl.io.images import save_grid
from hebmctl.io.manifest import (
    common_fields,
    describe_file,
    prepare_output,
    read_manifest,
    require_intact,
    stage_fingerprint,
    write_manifest,
)
from hebmctl.io.output import writes_artifact
from hebmctl.io.state import save_tensors
from hebmctl.metrics.backbone import evaluate_backbone
from hebmctl.models.backbone import LOG_STD_X_RANGE, Backbone, ElboTerms
from hebmctl.models.ema import ema_update
from hebmctl.models.joint_objective import inference_loss, inference_parameters, joint_loss
from hebmctl.models.stabilisers import SpectralRegulariser, kl_balance_coefficients
from hebmctl.noise import NoiseRows
from hebmctl.runtime import peak_cuda_mb, peak_rss_mb, resolve_device
from hebmctl.samplers import sample_joint_prior
from hebmctl.samplers.posterior import sample_posterior
from hebmctl.schemas.common import InputRef
from hebmctl.schemas.pretrain import BackboneManifest, PretrainConfig
from hebmctl.schemas.prior import PriorManifest, TrainPriorConfig
from hebmctl.stages.artifacts import ENERGY_NAME, WEIGHTS_NAME, build_backbone

GRID_COLUMNS = 8
CALIBRATION_IMAGES = 5000


@dataclass(frozen=True)
class RunControl:
    """How to run a stage, as opposed to what it computes (not part of the fingerprint)."""

    force: bool = False
    stop_after: int | None = None  # stop after this many steps in total, checkpointed, as if paused


@writes_artifact
def run(config: PretrainConfig, control: RunControl = RunControl()) -> BackboneManifest | None:
    """Train (or resume, or skip when up to date); None when stopped early by `control.stop_after`."""
    device = dist.init(resolve_device(config.device))
    train_set, test_set = check_inputs(config)
    inputs = [InputRef(role="data:train", path=config.data, kind="data", sha256=train_set.fingerprint(), subset=train_set.subset)]
    fingerprint = stage_fingerprint(config, inputs)
    existing = prepare_output(config.out, BackboneManifest, fingerprint, control.force)
    if existing is not None and config.prior == "joint" and not _joint_prior_is_current(config):
        # the backbone was written but not its prior (interrupted in between, or the prior folder damaged): rewrite the
        # prior from the final checkpoint
        trainer = _JointTrainer(config, _fresh_model(config, train_set, device), train_set, device, fingerprint)
        if latest_checkpoint(trainer.checkpoints, fingerprint) is None:
            raise ArtifactError(f"The jointly learned prior {config.prior_out} is missing or damaged and {trainer.checkpoints} holds no "
                                "checkpoint to rebuild it from: re-run with --force.")
        trainer.resume()
        _finalize_joint_prior(config, trainer, device)
    if existing is not None:
        console().print(f"[green]pretrain: {config.out} is up to date[/green] (fingerprint {fingerprint[:12]})")
        return existing
    model = _fresh_model(config, train_set, device)
    config.out.mkdir(parents=True, exist_ok=True)
    trainer = (_JointTrainer if config.prior == "joint" else _Trainer)(config, model, train_set, device, fingerprint)
    finished = trainer.train(control.stop_after)
    if not finished:
        console().print(f"[yellow]pretrain: stopped at step {trainer.step}; re-run the same command to continue.[/yellow]")
        return None
    if not dist.is_main():
        return None  # rank 0 evaluates and writes the backbone (DESIGN §8)
    manifest = _finalize(config, trainer, train_set, test_set, inputs, fingerprint, device)
    if isinstance(trainer, _JointTrainer):
        _finalize_joint_prior(config, trainer, device)
    return manifest


def _fresh_model(config: PretrainConfig, train_set: ImageSet, device: torch.device) -> Backbone:
    with torch.random.fork_rng(devices=[]):  # seeded initialisation without touching the caller's RNG
        torch.manual_seed(config.seed)
        return build_backbone(config, train_set.image_shape).to(device)


def check_inputs(config: PretrainConfig) -> tuple[ImageSet, ImageSet]:
    """Load the train and test splits and check every size and shape rule before any compute (also run by --dry-run)."""
    train_set = load_split(config.data, "train", config.exclude_classes, config.limit)
    test_set = load_split(config.data, "test", (), config.eval_limit)  # an empty test split fails here, not after training
    with torch.device("meta"):  # the family's own size rules (a misfit is a DataError), without allocating weights
        build_backbone(config, train_set.image_shape)
    if config.precision == "bf16" and resolve_device(config.device).type != "cuda":
        raise ConfigError(f"pretrain --precision bf16 runs the forward pass under CUDA's bfloat16 autocast, but this run's device is "
                          f"{resolve_device(config.device)}. Drop --precision (fp32), or run on a CUDA GPU.")
    if test_set.image_shape != train_set.image_shape:
        raise DataError(f"{config.data}: the test split's images are {test_set.image_shape} (H, W, C) but the train split's are "
                        f"{train_set.image_shape}. Both splits need one image size.")
    return train_set, test_set


def lr_at(step: int, total: int, peak: float) -> float:
    """Cosine decay from `peak` to 0.1 * peak over `total` steps."""
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(step, total) / total)))


def kl_weight_at(step: int, warmup_steps: int) -> float:
    return 1.0 if warmup_steps == 0 else min(1.0, step / warmup_steps)


class UpdateSkipper:
    """Skips updates whose gradient norm exceeds `threshold` or is not finite (NVAE / VDVAE's guard),
    counts them, and stops a run that skips at least `stall_fraction` of the last `window` steps
    (a silent stall: the model no longer learns). `threshold=None` skips only non-finite gradients."""

    def __init__(self, threshold: float | None, window: int = 100, stall_fraction: float = 0.9) -> None:
        self.threshold, self.window, self.stall_fraction = threshold, window, stall_fraction
        self.total = 0
        self.recent: list[bool] = []

    def should_skip(self, grad_norm: float) -> bool:
        skip = not math.isfinite(grad_norm) or (self.threshold is not None and grad_norm > self.threshold)
        self.total += int(skip)
        self.recent = (self.recent + [skip])[-self.window :]
        if len(self.recent) == self.window and sum(self.recent) >= self.stall_fraction * self.window:
            raise DivergenceError(
                f"pretrain skipped {sum(self.recent)} of the last {self.window} updates (gradient norm above --skip-grad-norm "
                f"{self.threshold} or not finite): training has stalled. Raise --skip-grad-norm, lower --lr, and re-run with --force."
            )
        return skip

    def to_dict(self) -> dict:
        return {"total": self.total, "recent": self.recent}

    def restore(self, state: dict) -> None:
        self.total, self.recent = int(state.get("total", 0)), [bool(b) for b in state.get("recent", [])]


class _Trainer:
    """The training loop's state: model, EMA, optimizer, RNG, step. Data order is a function of (seed, epoch)."""

    def __init__(self, config: PretrainConfig, model: Backbone, train_set: ImageSet, device: torch.device, fingerprint: str) -> None:
        self.config, self.model, self.device, self.fingerprint = config, model, device, fingerprint
        self.ema = copy.deepcopy(model).requires_grad_(False)
        self.optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
        self.generator = torch.Generator(device=device).manual_seed(config.seed)
        self.images = torch.from_numpy(train_set.images).to(device)
        self.batches_per_epoch = max(1, len(train_set) // config.batch_size)
        self.global_batch = min(config.batch_size, len(train_set))  # rows per step, whatever the number of processes
        if self.global_batch < dist.world_size():
            raise ConfigError(f"pretrain: a batch of {self.global_batch} images cannot be shared by {dist.world_size()} processes; "
                              "raise --batch-size or use fewer processes.")
        self.free_nats = torch.tensor([config.free_bits * d for d in model.group_dims], device=device)
        self.step = 0
        self.wall_s = 0.0
        self.skips = UpdateSkipper(config.skip_grad_norm)
        self.group_dims = torch.tensor(model.group_dims, dtype=torch.float32, device=device)
        self.spectral = SpectralRegulariser(model, seed=config.seed).to(device) if config.spectral_reg else None
        self._epoch_order: tuple[int, torch.Tensor] | None = None

    @property
    def checkpoints(self) -> Path:
        return self.config.out / "checkpoints"

    @property
    def state(self) -> TrainingState:
        modules = {"model": self.model, "ema": self.ema} | ({"spectral": self.spectral} if self.spectral is not None else {})
        return TrainingState(modules, {"adamw": self.optimizer}, {"noise": self.generator})

    def batch(self, step: int) -> torch.Tensor:
        """Images of `step`: a slice of the epoch's permutation, seeded by (seed, epoch); `[B, C, H, W]`
        (with several processes, this rank's rows of that batch, `dist.shard`)."""
        epoch, position = divmod(step, self.batches_per_epoch)
        if self._epoch_order is None or self._epoch_order[0] != epoch:
            order_gen = torch.Generator().manual_seed(self.config.seed * 1_000_003 + epoch)
            self._epoch_order = (epoch, torch.randperm(len(self.images), generator=order_gen))
        rows = self._epoch_order[1][position * self.config.batch_size : (position + 1) * self.config.batch_size]
        rows = rows[slice(*dist.shard(len(rows)))]
        return to_unit_range(self.images[rows.to(self.images.device)])

    def _extra(self) -> dict:
        """What a checkpoint stores besides the state: wall time, the update skipper's history."""
        return {"wall_s": self.wall_s, "skips": self.skips.to_dict()}

    def _restore(self, folder: Path) -> None:
        self.step, extra = load_checkpoint(folder, self.state)
        self._restore_extra(extra)

    def _restore_extra(self, extra: dict) -> None:
        self.wall_s = float(extra.get("wall_s", 0.0))
        self.skips.restore(extra.get("skips", {}))

    def resume(self) -> None:
        found = latest_checkpoint(self.checkpoints, self.fingerprint)
        if found is None:
            (self.config.out / "metrics.jsonl").unlink(missing_ok=True)
            self._fresh_start()
            return
        self._restore(found)
        restore_log(found, self.config.out / "metrics.jsonl", self.step)
        console().print(f"pretrain: resuming from {found.name} (step {self.step})")

    def _fresh_start(self) -> None:
        """Called when no checkpoint exists; nothing to do for the backbone alone."""

    def roll_back(self, record_step: int) -> None:
        raise NotImplementedError  # train_step never returns None here: a non-finite loss raises DivergenceError

    def train_step(self) -> dict[str, float] | None:
        cfg = self.config
        for group in self.optimizer.param_groups:
            group["lr"] = lr_at(self.step, cfg.steps, cfg.lr)
        x = self.batch(self.step)
        with torch.autocast(device_type=self.device.type, dtype=torch.bfloat16, enabled=cfg.precision == "bf16"):
            terms = self.elbo_terms(x)
        kl_per_layer = dist.batch_mean(terms.kl)  # [L], over the global batch
        kl_beta = kl_weight_at(self.step, cfg.kl_warmup_steps)
        kl_coeffs = self.kl_coefficients(kl_per_layer, kl_beta)
        spectral = self.spectral() if self.spectral is not None else torch.zeros((), device=self.device)
        loss = (dist.batch_mean(terms.recon_nll) + kl_beta * (kl_coeffs * torch.maximum(kl_per_layer, self.free_nats)).sum()
                + (cfg.spectral_reg or 0.0) * spectral)
        if not torch.isfinite(loss):
            raise DivergenceError(
                f"pretrain diverged at step {self.step}: the loss is {float(loss.detach())}. The last good checkpoint is kept in "
                f"{self.checkpoints}; lower --lr or --grad-clip and re-run with --force (or keep the settings and re-run to retry)."
            )
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        dist.sum_gradients(self.model.parameters())  # each rank's backward reached only its rows: the sum is the batch's gradient
        terms = ElboTerms(terms.recon_nll.detach(), terms.kl.detach(), terms.x_mean.detach())
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
        skip = self.skips.should_skip(float(grad_norm))
        if not skip:
            self.optimizer.step()
        ema_update(self.ema, self.model, cfg.ema_decay, self.step)
        self.step += 1
        return {
            "step": self.step,
            "loss": loss.item(),
            "recon_nll": float(dist.batch_mean(terms.recon_nll)),
            "kl_per_layer": [float(k) for k in kl_per_layer.detach()],
            "elbo": float(-dist.batch_mean(terms.recon_nll + terms.kl.sum(-1))),
            "mse": float(dist.global_mean((terms.x_mean - x) ** 2)),
            "kl_weight": kl_beta,
            "grad_norm": float(grad_norm),
            "skipped_updates": self.skips.total,
            "lr": self.optimizer.param_groups[0]["lr"],
            "decoder_std": float(self.decoder_log_std(x, terms.x_mean).exp()),
        } | self.stabiliser_record(kl_coeffs, spectral)

    def kl_coefficients(self, kl_per_layer: torch.Tensor, kl_beta: float) -> torch.Tensor:
        """gamma `[L]`: NVAE's KL balancing while the warm-up weight is below 1 (with --kl-balance), else ones."""
        if self.config.kl_balance and kl_beta < 1.0:
            return kl_balance_coefficients(torch.maximum(kl_per_layer, self.free_nats), self.group_dims)
        return torch.ones_like(kl_per_layer)

    def stabiliser_record(self, kl_coeffs: torch.Tensor, spectral: torch.Tensor) -> dict:
        """metrics.jsonl fields of the options that are on: the KL coefficients, the sum of the largest singular values."""
        record = {"kl_coeffs": [round(float(c), 4) for c in kl_coeffs]} if self.config.kl_balance else {}
        return record | ({"spectral_sum": float(spectral)} if self.spectral is not None else {})

    @staticmethod
    def progress_info(record: dict) -> str:
        return f"loss {record['loss']:.1f}  mse {record['mse']:.4f}  kl {sum(record['kl_per_layer']):.1f}"

    def elbo_terms(self, x: torch.Tensor) -> ElboTerms:
        """`Backbone.elbo_terms` of the step's batch `[B, C, H, W]`, decoder std calibrated on the batch. With several
        processes x is this rank's shard: its posterior noise is its rows of the whole batch's noise, and the std is
        calibrated on the whole batch, so every number is the one-process number (up to float summation order)."""
        if dist.world_size() == 1:
            return self.model.elbo_terms(x, self.generator, calibrate=True)
        noise = NoiseRows(self.generator, *dist.shard(self.global_batch), self.global_batch)
        terms = self.model.elbo_terms(x, noise, calibrate=False)
        recon_nll = self.model.recon_nll(x, terms.params, self.decoder_log_std(x, terms.x_mean))
        return ElboTerms(recon_nll, terms.kl, terms.x_mean, terms.params)

    def decoder_log_std(self, x: torch.Tensor, x_mean: torch.Tensor) -> torch.Tensor:
        """`Backbone.calibrated_log_std` of the global batch (no gradient): 0.5 log(per-pixel MSE), clamped."""
        if dist.world_size() == 1:
            return self.model.calibrated_log_std(x, x_mean)
        mse = dist.global_mean((x - x_mean.detach()) ** 2)
        return (0.5 * torch.log(mse.clamp_min(1e-12))).clamp(*LOG_STD_X_RANGE)

    def train(self, stop_after: int | None) -> bool:
        """Run until `steps` (True) or until `stop_after` (False, checkpointed)."""
        cfg = self.config
        self.resume()
        last = cfg.steps if stop_after is None else min(cfg.steps, stop_after)
        self.model.train()
        with progress_bar() as bar:
            task = bar.add_task("pretrain", total=cfg.steps, completed=self.step, unit="step", info="")
            while self.step < last:
                t0 = time.perf_counter()
                record = self.train_step()
                self.wall_s += time.perf_counter() - t0
                if record is None:  # divergence (joint learning): nothing was applied
                    self.roll_back(self.step + 1)
                    bar.update(task, completed=self.step)
                    continue
                bar.update(task, advance=1, info=self.progress_info(record))
                if self.step % cfg.log_every == 0 or self.step == last:
                    append_jsonl(cfg.out / "metrics.jsonl", record | {"wall_s": round(self.wall_s, 3)})
                if self.step % cfg.checkpoint_every == 0 or self.step == last:
                    save_checkpoint(self.checkpoints, self.step, self.fingerprint, self.state, self._extra(), cfg.keep_checkpoints,
                                    log=cfg.out / "metrics.jsonl")
        return self.step >= cfg.steps


# ---- joint learning of the backbone and an EBM prior (--prior joint; Joint-EBM eq. 15-19) --------------------------------------


def joint_prior_config(config: PretrainConfig) -> TrainPriorConfig:
    """The prior artifact's config: train-prior's joint scheme with the settings --prior joint used, so that every
    reader of priors (hebmctl.priors, samplers) treats it like a two-stage joint prior."""
    return TrainPriorConfig(
        run=config.run, backbone=config.out, out=config.prior_out, name=config.prior_name, scheme="joint",
        langevin_steps=config.prior_langevin_steps, step_size=config.prior_step_size, width=config.energy_width,
        depth=config.energy_depth, steps=config.steps, batch_size=config.batch_size, lr=config.energy_lr, beta1=config.energy_beta1,
        energy_l2=config.energy_l2, grad_clip=config.energy_grad_clip, ema_decay=config.ema_decay,
        max_energy_gap=config.max_energy_gap, max_rollbacks=config.max_rollbacks, seed=config.seed, device=config.device,
    )


class _JointTrainer(_Trainer):
    """_Trainer plus an EBM prior learned with the backbone (the objective: hebmctl.models.joint_objective).

    Per batch: z_q ~ q(z | x) reparametrised; negatives u- by K Langevin steps on F(T(u)) - |u|^2/2 from N(0, I), z- = T(u-)
    detached; with --posterior langevin, z+ by posterior Langevin from q's draw (or N(0, I)). One backward pass of
    `joint_loss`, then one AdamW step of the backbone and one Adam step of the EBM. Divergence (non-finite values or
    |energy gap| > max_energy_gap) applies nothing and rolls back to the last checkpoint with both learning rates halved.
    """

    def __init__(self, config: PretrainConfig, model: Backbone, train_set: ImageSet, device: torch.device, fingerprint: str) -> None:
        if dist.world_size() > 1:
            raise ConfigError("pretrain --prior joint runs in one process for now (its Langevin chains and EBM update are not "
                              "sharded): run it without torchrun.")
        super().__init__(config, model, train_set, device, fingerprint)
        self.prior_config = joint_prior_config(config)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed + 1)
            self.energy = priors.energy_network(self.prior_config, model.group_shapes).to(device)
        self.energy_ema = copy.deepcopy(self.energy).requires_grad_(False)
        self.energy_optimizer = torch.optim.Adam(self.energy.parameters(), lr=config.energy_lr, betas=(config.energy_beta1, 0.999))
        self.lr_scale, self.rollbacks = 1.0, []
        self._inference_params: list[torch.nn.Parameter] | None = None

    @property
    def state(self) -> TrainingState:
        return TrainingState({"model": self.model, "ema": self.ema, "energy": self.energy, "energy_ema": self.energy_ema},
                             {"adamw": self.optimizer, "energy_adam": self.energy_optimizer}, {"noise": self.generator})

    def _extra(self) -> dict:
        return super()._extra() | {"lr_scale": self.lr_scale, "rollbacks": self.rollbacks}

    def _restore_extra(self, extra: dict) -> None:
        super()._restore_extra(extra)
        self.lr_scale, self.rollbacks = float(extra.get("lr_scale", 1.0)), list(extra.get("rollbacks", []))

    def _fresh_start(self) -> None:
        """A step-0 checkpoint, so that a divergence in the first `checkpoint_every` steps has somewhere to roll back to."""
        save_checkpoint(self.checkpoints, 0, self.fingerprint, self.state, self._extra(), self.config.keep_checkpoints)

    def neg_energy_of_u(self, u: torch.Tensor) -> torch.Tensor:
        """F(T(u)) `[B]` for u `[B, D]` (training networks)."""
        return self.energy(self.model.u_to_z(u))

    def posterior_draw(self, x: torch.Tensor, z_q: torch.Tensor, log_std: torch.Tensor) -> tuple[torch.Tensor, dict]:
        """z+ `[B, D]` by posterior Langevin in u-space (MLE), started at T^{-1}(z_q) or N(0, I); detached."""
        cfg = self.config
        if cfg.posterior_init == "q":
            u_init = self.model.z_to_u(z_q.detach()).detach()
        else:
            u_init = torch.randn(z_q.shape, generator=self.generator, device=self.device)
        u_pos, stats = sample_posterior(self.model, self.energy, x, u_init, cfg.posterior_langevin_steps, cfg.posterior_step_size,
                                        self.generator, log_std)
        with torch.no_grad():
            z_pos = self.model.u_to_z(u_pos)
        return z_pos, {"posterior_log_density": float(stats.log_density[-1]), "posterior_finite": stats.is_finite()}

    def _add_inference_gradient(self, x: torch.Tensor, z_q: torch.Tensor, kl: torch.Tensor, log_std: torch.Tensor) -> None:
        """MLE started from q: q keeps learning by eq. 19, its gradient applied to the inference parameters only."""
        if self._inference_params is None:
            self._inference_params = inference_parameters(self.model, x)
        loss = inference_loss(self.model, self.energy, x, z_q, kl, log_std)
        for p, g in zip(self._inference_params, torch.autograd.grad(loss, self._inference_params), strict=True):
            p.grad = g if p.grad is None else p.grad + g

    def train_step(self) -> dict | None:
        cfg = self.config
        for group in self.optimizer.param_groups:
            group["lr"] = lr_at(self.step, cfg.steps, cfg.lr) * self.lr_scale
        for group in self.energy_optimizer.param_groups:
            group["lr"] = cfg.energy_lr * self.lr_scale
        x = self.batch(self.step)
        z_q, kl = self.model.posterior(x, self.generator, sample=True)
        with torch.no_grad():
            log_std = self.model.calibrated_log_std(x, self.model.decode(z_q))
        u_init = torch.randn(z_q.shape, generator=self.generator, device=self.device)
        u_neg, prior_stats = sample_joint_prior(self.neg_energy_of_u, u_init, cfg.prior_langevin_steps, cfg.prior_step_size, self.generator)
        with torch.no_grad():
            z_neg = self.model.u_to_z(u_neg)
        chain = {"prior_langevin_grad_norm": float(prior_stats.grad_norm[-1]), "posterior_finite": True}
        mle = cfg.posterior == "langevin"
        z_pos = z_q
        if mle:
            z_pos, posterior_record = self.posterior_draw(x, z_q, log_std)
            chain |= posterior_record
        kl_beta = kl_weight_at(self.step, cfg.kl_warmup_steps)
        terms = joint_loss(self.model, self.energy, x, z_pos, z_neg, None if mle else kl, log_std, kl_beta, cfg.energy_l2)
        finite = terms.is_finite() and prior_stats.is_finite() and chain.pop("posterior_finite")
        if not finite or abs(terms.energy_gap) > cfg.max_energy_gap:
            return None
        self.optimizer.zero_grad(set_to_none=True)
        self.energy_optimizer.zero_grad(set_to_none=True)
        terms.total.backward()
        if mle and cfg.posterior_init == "q":
            self._add_inference_gradient(x, z_q, kl, log_std)
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
        energy_grad_norm = torch.nn.utils.clip_grad_norm_(self.energy.parameters(), cfg.energy_grad_clip)
        if not self.skips.should_skip(float(grad_norm)):
            self.optimizer.step()
            self.energy_optimizer.step()
        ema_update(self.ema, self.model, cfg.ema_decay, self.step)
        ema_update(self.energy_ema, self.energy, cfg.ema_decay, self.step)
        self.step += 1
        return {"step": self.step} | terms.record() | chain | {
            "kl_per_layer": [float(k) for k in kl.detach().mean(0)],
            "elbo": float(-(terms.recon.detach() + kl.detach().sum(-1).mean())) if not mle else None,
            "mse": float(((terms.x_mean - x) ** 2).mean()), "kl_weight": kl_beta, "grad_norm": float(grad_norm), "energy_grad_norm": float(energy_grad_norm),
            "skipped_updates": self.skips.total, "lr": self.optimizer.param_groups[0]["lr"],
            "energy_lr": self.energy_optimizer.param_groups[0]["lr"], "decoder_std": float(log_std.exp()),
        }

    @staticmethod
    def progress_info(record: dict) -> str:
        return f"recon {record['recon_nll']:.1f}  gap {record['energy_gap']:+.3f}  ebm {record['ebm_term']:+.3f}"

    def _posterior_hint(self) -> str:
        """MLE learning: the posterior chain's stable step shrinks with the decoder's std (the curvature of log p(x|z) grows as
        1/std^2), so a chain that was stable early can blow up later; name its step size too."""
        if self.config.posterior != "langevin":
            return ""
        return f", a smaller --posterior-step-size (now {self.config.posterior_step_size:g})"

    def roll_back(self, record_step: int) -> None:
        """Divergence: back to the newest checkpoint with both learning rates halved, or stop."""
        if len(self.rollbacks) >= self.config.max_rollbacks:
            raise DivergenceError(
                f"pretrain --prior joint diverged at step {record_step} (non-finite loss or energy, or |energy gap| > --max-energy-gap) "
                f"after {len(self.rollbacks)} rollbacks with halved learning rates. Checkpoints are in {self.checkpoints}. Try a smaller "
                f"--energy-lr or --lr, a smaller --prior-step-size, a larger --energy-l2{self._posterior_hint()}, then re-run with --force."
            )
        rollbacks, scale = self.rollbacks, self.lr_scale * 0.5
        self._restore(latest_checkpoint(self.checkpoints, self.fingerprint))
        truncate_jsonl(self.config.out / "metrics.jsonl", self.step)
        self.rollbacks = rollbacks + [{"diverged_at_step": record_step, "resumed_from_step": self.step, "lr_scale": scale}]
        self.lr_scale = scale
        console().print(f"[yellow]pretrain: divergence at step {record_step}; rolled back to step {self.step}, learning rates x{scale:g}[/yellow]")


def _joint_prior_is_current(config: PretrainConfig) -> bool:
    """True when the prior folder holds a complete, intact prior made from the backbone manifest now in config.out."""
    try:
        manifest, _ = read_manifest(config.prior_out, PriorManifest)
        require_intact(config.prior_out, manifest)
    except HebmctlError:
        return False
    return manifest.input("backbone").sha256 == sha256_file(config.out / "manifest.json")


def _finalize_joint_prior(config: PretrainConfig, trainer: _JointTrainer, device: torch.device) -> PriorManifest:
    """Write the jointly learned prior (EMA energy weights) as a prior artifact of the backbone just written, then a grid of
    its samples (`ebm_samples.png`: K prior Langevin steps from N(0, I) on the EMA networks)."""
    out, prior_config = config.prior_out, trainer.prior_config
    out.mkdir(parents=True, exist_ok=True)
    save_tensors(out / ENERGY_NAME, trainer.energy_ema.state_dict())
    model, energy = trainer.ema.eval(), trainer.energy_ema.eval()
    generator = torch.Generator(device=device).manual_seed(config.seed)
    u_init = torch.randn((GRID_COLUMNS * GRID_COLUMNS, model.latent_dim), generator=generator, device=device)
    u, _ = sample_joint_prior(lambda v: energy(model.u_to_z(v)), u_init, config.prior_langevin_steps, config.prior_step_size, generator)
    with torch.no_grad():
        save_grid(out / "ebm_samples.png", from_unit_range(model.decode(model.u_to_z(u)).clamp(-1, 1).cpu()), GRID_COLUMNS)
    backbone_sha = sha256_file(config.out / "manifest.json")
    inputs = [InputRef(role="backbone", path=str(config.out), kind="backbone", sha256=backbone_sha)]
    records = [json.loads(line) for line in (config.out / "metrics.jsonl").read_text().splitlines() if line.strip()][-10:]
    metrics = {
        "final_energy_gap": sum(r["energy_gap"] for r in records) / max(len(records), 1),
        "final_ebm_term": sum(r["ebm_term"] for r in records) / max(len(records), 1),
        "rollbacks": trainer.rollbacks,
        "train_wall_s": round(trainer.wall_s, 2),
        "posterior": config.posterior,
        "device": str(device),
    }
    manifest = PriorManifest(
        **common_fields(stage_fingerprint(prior_config, inputs)), config=prior_config, inputs=inputs,
        outputs=[describe_file(out, n) for n in (ENERGY_NAME, "ebm_samples.png")], metrics=metrics,
        group_dims=model.group_dims, group_shapes=model.group_shapes, schedule=None, step_sizes=[config.prior_step_size],
        learned_jointly=True,
    )
    write_manifest(out, manifest)
    console().print(f"[green]pretrain: jointly learned prior[/green] energy gap {metrics['final_energy_gap']:+.4f} -> {out}")
    return manifest


def _finalize(config: PretrainConfig, trainer: _Trainer, train_set: ImageSet, test_set: ImageSet, inputs: list[InputRef], fingerprint: str,
              device: torch.device) -> BackboneManifest:
    """Write EMA weights, evaluate on the test split, write grids, then the manifest."""
    out, ema = config.out, trainer.ema.eval()
    ema.log_std_x.copy_(calibrate_decoder_std(ema, train_set.images[subset_positions(train_set.labels, CALIBRATION_IMAGES)], device, config.seed))
    save_tensors(out / WEIGHTS_NAME, ema.state_dict())
    t0 = time.perf_counter()
    test_metrics = evaluate_backbone(ema, test_set.images, device, seed=config.seed)
    _write_grids(out, ema, test_set.images[subset_positions(test_set.labels, GRID_COLUMNS * 4)], device, config.seed)
    names = [WEIGHTS_NAME, "recon_grid.png", "prior_samples.png", "metrics.jsonl"]
    metrics = {
        "test": test_metrics,
        "test_subset": None if test_set.subset is None else test_set.subset.model_dump(),
        "train_wall_s": round(trainer.wall_s, 2),
        "steps_per_s": round(config.steps / max(trainer.wall_s, 1e-9), 3),
        "eval_wall_s": round(time.perf_counter() - t0, 2),
        "n_train_images": len(train_set),
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "peak_cuda_mb": peak_cuda_mb(device),
        "device": str(device),
        "num_parameters": sum(p.numel() for p in ema.parameters()),
        "decoder_std": round(float(ema.log_std_x.exp()), 5),
        "skipped_updates": trainer.skips.total,
        "data_split": describe_split(config.data),  # the anomaly protocol's sizes, positive fraction and row hashes; None for plain sets
    }
    manifest = BackboneManifest(
        **common_fields(fingerprint),
        config=config,
        inputs=inputs,
        outputs=[describe_file(out, n) for n in names],
        metrics=metrics,
        image_shape=train_set.image_shape,
        group_dims=ema.group_dims,
        group_shapes=ema.group_shapes,
    )
    write_manifest(out, manifest)
    console().print(
        f"[green]pretrain: done[/green] test recon MSE {test_metrics['recon_mse']:.4f}, ELBO {test_metrics['elbo_nats']:.1f} nats, "
        f"active units {test_metrics['active_units']} of {list(ema.group_dims)}"
    )
    return manifest


@torch.no_grad()
def calibrate_decoder_std(model: Backbone, images: np.ndarray, device: torch.device, seed: int, batch_size: int = 500) -> torch.Tensor:
    """Closed-form decoder log std of the final (EMA) model: 0.5 log(per-pixel MSE) of posterior-sample reconstructions."""
    generator = torch.Generator(device=device).manual_seed(seed)
    sq_err, count = 0.0, 0
    for start in range(0, len(images), batch_size):
        x = to_unit_range(images[start : start + batch_size]).to(device)
        z, _ = model.posterior(x, generator, sample=True)
        sq_err += float(((model.decode(z) - x) ** 2).sum())
        count += x.numel()
    return torch.tensor(0.5 * math.log(max(sq_err / count, 1e-12))).clamp(*LOG_STD_X_RANGE)


@torch.no_grad()
def _write_grids(out: Path, model: Backbone, images: np.ndarray, device: torch.device, seed: int) -> None:
    """recon_grid.png: rows alternate originals / reconstructions (fewer columns when there are fewer
    than 8 test images); prior_samples.png: 64 Gaussian-prior samples."""
    columns = min(GRID_COLUMNS, len(images))
    images = images[: len(images) // columns * columns]
    x = to_unit_range(images).to(device)
    z_mean, _ = model.posterior(x, None, sample=False)
    recon = from_unit_range(model.decode(z_mean).clamp(-1, 1).cpu())
    pairs = np.concatenate([np.stack([images[r * columns : (r + 1) * columns], recon[r * columns : (r + 1) * columns]]) for r in range(len(images) // columns)])
    save_grid(out / "recon_grid.png", pairs.reshape(-1, *images.shape[1:]), columns)
    generator = torch.Generator(device=device).manual_seed(seed)
    samples = model.decode(model.sample_prior(GRID_COLUMNS * GRID_COLUMNS, generator)).clamp(-1, 1).cpu()
    save_grid(out / "prior_samples.png", from_unit_range(samples), GRID_COLUMNS)
