"""Stage `pretrain`: train the hierarchical VAE backbone (DESIGN §1, issue 2).

Loss per batch (negative ELBO with KL warm-up and per-layer free bits):
    recon_nll + beta(step) * sum_i max(KL_i, free_bits * dim_i),   beta rising 0 -> 1.
Writes `weights.safetensors` (EMA weights), `recon_grid.png`, `prior_samples.png`,
`metrics.jsonl`, then `manifest.json`. Re-running the same command resumes from the newest
checkpoint; a complete, up-to-date backbone is left as it is.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from hebmctl import dist
from hebmctl.data import ImageSet, from_unit_range, load_split, to_unit_range
from hebmctl.data.readers import describe_split
from hebmctl.data.subsets import subset_positions
from hebmctl.errors import ConfigError, DataError, DivergenceError
from hebmctl.io.checkpoints import TrainingState, latest_checkpoint, load_checkpoint, save_checkpoint
from hebmctl.io.console import append_jsonl, console, progress_bar, truncate_jsonl
from hebmctl.io.images import save_grid
from hebmctl.io.manifest import common_fields, describe_file, prepare_output, stage_fingerprint, write_manifest
from hebmctl.io.output import writes_artifact
from hebmctl.io.state import save_tensors
from hebmctl.metrics.backbone import evaluate_backbone
from hebmctl.models.backbone import LOG_STD_X_RANGE, Backbone, ElboTerms, NoiseRows
from hebmctl.models.ema import ema_update
from hebmctl.runtime import peak_cuda_mb, peak_rss_mb, resolve_device
from hebmctl.schemas.common import InputRef
from hebmctl.schemas.pretrain import BackboneManifest, PretrainConfig
from hebmctl.stages.artifacts import WEIGHTS_NAME, build_backbone

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
    if existing is not None:
        console().print(f"[green]pretrain: {config.out} is up to date[/green] (fingerprint {fingerprint[:12]})")
        return existing
    with torch.random.fork_rng(devices=[]):  # seeded initialisation without touching the caller's RNG
        torch.manual_seed(config.seed)
        model = build_backbone(config, train_set.image_shape).to(device)
    config.out.mkdir(parents=True, exist_ok=True)
    trainer = _Trainer(config, model, train_set, device, fingerprint)
    finished = trainer.train(control.stop_after)
    if not finished:
        console().print(f"[yellow]pretrain: stopped at step {trainer.step}; re-run the same command to continue.[/yellow]")
        return None
    if not dist.is_main():
        return None  # rank 0 evaluates and writes the backbone (DESIGN §8)
    return _finalize(config, trainer, train_set, test_set, inputs, fingerprint, device)


def check_inputs(config: PretrainConfig) -> tuple[ImageSet, ImageSet]:
    """Load the train and test splits and check every size and shape rule before any compute (also run by --dry-run)."""
    train_set = load_split(config.data, "train", config.exclude_classes, config.limit)
    test_set = load_split(config.data, "test", (), config.eval_limit)  # an empty test split fails here, not after training
    with torch.device("meta"):  # the family's own size rules (a misfit is a DataError), without allocating weights
        build_backbone(config, train_set.image_shape)
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
        self._epoch_order: tuple[int, torch.Tensor] | None = None

    @property
    def checkpoints(self) -> Path:
        return self.config.out / "checkpoints"

    @property
    def state(self) -> TrainingState:
        return TrainingState({"model": self.model, "ema": self.ema}, {"adamw": self.optimizer}, {"noise": self.generator})

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

    def resume(self) -> None:
        found = latest_checkpoint(self.checkpoints, self.fingerprint)
        if found is None:
            (self.config.out / "metrics.jsonl").unlink(missing_ok=True)
            return
        self.step, extra = load_checkpoint(found, self.state)
        self.wall_s = float(extra.get("wall_s", 0.0))
        self.skips.restore(extra.get("skips", {}))
        truncate_jsonl(self.config.out / "metrics.jsonl", self.step)
        console().print(f"pretrain: resuming from {found.name} (step {self.step})")

    def train_step(self) -> dict[str, float]:
        cfg = self.config
        for group in self.optimizer.param_groups:
            group["lr"] = lr_at(self.step, cfg.steps, cfg.lr)
        x = self.batch(self.step)
        terms = self.elbo_terms(x)
        kl_per_layer = dist.batch_mean(terms.kl)  # [L], over the global batch
        kl_beta = kl_weight_at(self.step, cfg.kl_warmup_steps)
        loss = dist.batch_mean(terms.recon_nll) + kl_beta * torch.maximum(kl_per_layer, self.free_nats).sum()
        if not torch.isfinite(loss):
            raise DivergenceError(
                f"pretrain diverged at step {self.step}: the loss is {float(loss)}. The last good checkpoint is kept in "
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
        }

    def elbo_terms(self, x: torch.Tensor) -> ElboTerms:
        """`Backbone.elbo_terms` of the step's batch `[B, C, H, W]`, decoder std calibrated on the batch. With several
        processes x is this rank's shard: its posterior noise is its rows of the whole batch's noise, and the std is
        calibrated on the whole batch, so every number is the one-process number (up to float summation order)."""
        if dist.world_size() == 1:
            return self.model.elbo_terms(x, self.generator, calibrate=True)
        noise = NoiseRows(self.generator, *dist.shard(self.global_batch), self.global_batch)
        terms = self.model.elbo_terms(x, noise, calibrate=False)
        recon_nll = self.model.recon_nll(x, terms.x_mean, self.decoder_log_std(x, terms.x_mean))
        return ElboTerms(recon_nll, terms.kl, terms.x_mean)

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
                bar.update(task, advance=1, info=f"loss {record['loss']:.1f}  mse {record['mse']:.4f}  kl {sum(record['kl_per_layer']):.1f}")
                if self.step % cfg.log_every == 0 or self.step == last:
                    append_jsonl(cfg.out / "metrics.jsonl", record | {"wall_s": round(self.wall_s, 3)})
                if self.step % cfg.checkpoint_every == 0 or self.step == last:
                    save_checkpoint(self.checkpoints, self.step, self.fingerprint, self.state,
                                    {"wall_s": self.wall_s, "skips": self.skips.to_dict()}, cfg.keep_checkpoints)
        return self.step >= cfg.steps


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
