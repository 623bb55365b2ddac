"""Stage `train-prior`: an energy-based prior in u-space on a frozen backbone (DESIGN §3, issue 3).

Schemes (each a prior class in `hebmctl.priors`, which owns its negatives and loss; the network outputs a
negative energy F; density is proportional to exp(F)):
- `joint` (Joint-EBM): log p(u) = F(T(u)) - |u|^2/2; negatives by K Langevin steps from N(0, I);
  loss mean F(T(u_neg)) - mean F(T(u_pos)).
- `diffusion` (Diff-EBM): level t ~ U{0..T-1} per example, (u_t, u_{t+1}) from the forward process
  started at cached u_0, K Langevin steps of log p(u_t | u_{t+1}) initialised at u_{t+1};
  loss mean(-(G(pos, t) - G(neg, t)) / s_t^2).
- `cooperative` (CDRL): the diffusion scheme's EBMs, chains started by an initializer network regressed on the
  refined samples.
`--labels` (diffusion and joint schemes) couples the cached class labels: per-class energies, the marginal as the
prior's density, the conditional recovery likelihood at the coupled level and a cross-entropy term (the prior
classes and `hebmctl.priors.labels`); the coupling is checked against the cache before any compute and recorded
in the manifest (`label_coupling`).
A prior's extra trainable networks (`prior.extra_modules()`, e.g. the cooperative initializer) get, generically,
their own Adam (same learning rate and betas), EMA, gradient clip and checkpoint entries; their EMA weights are
written as NAME.safetensors next to the energy.
Divergence (a non-finite loss or energy, or a positive-negative gap beyond `max_energy_gap` in the units
of the prior's loss (`TrainingOutcome.gap`), the sign that the Langevin chains have stopped reaching the
model's high-density region) rolls back to the last checkpoint with the learning rate
halved, at most `max_rollbacks` times, then stops with DivergenceError.
Several processes (torchrun, DESIGN §8): each rank computes a contiguous shard of every global batch (`--batch-size`
rows, the same rows as one process), its chains drawing their rows of the whole batch's noise (`NoiseRows`); the
losses and statistics are the shards' means combined into the batch's (`dist.mean_of_shards`, one all_reduce), so
the divergence guard decides the same on every rank; the gradients are summed over ranks before clipping. Rank 0
chooses the checkpoint to resume from and writes checkpoints, metrics, weights and the manifest. Every number is
one process's up to float summation order, and a run resumes with any number of processes.
"""

from __future__ import annotations

import copy
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from hebmctl import dist, priors
from hebmctl.errors import ConfigError, DataError, DivergenceError
from hebmctl.io.checkpoints import TrainingState, latest_checkpoint, load_checkpoint, restore_log, save_checkpoint
from hebmctl.io.console import append_jsonl, console, progress_bar
from hebmctl.io.latent_batches import LatentBatches
from hebmctl.io.latent_store import read_labels
from hebmctl.io.manifest import (
    check_lineage,
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
from hebmctl.models.ema import ema_update
from hebmctl.noise import Noise, NoiseRows
from hebmctl.runtime import cuda_matmul_precision, peak_cuda_mb, peak_rss_mb, resolve_device
from hebmctl.samplers.graphs import capture_enabled
from hebmctl.schemas.common import InputRef
from hebmctl.schemas.latents import LatentsManifest
from hebmctl.schemas.prior import DEFAULT_LABEL_WEIGHT, LabelCoupling, PriorManifest, TrainPriorConfig
from hebmctl.stages.artifacts import ENERGY_NAME, LoadedBackbone, load_backbone


@dataclass(frozen=True)
class RunControl:
    force: bool = False
    stop_after: int | None = None


@writes_artifact
def run(config: TrainPriorConfig, control: RunControl = RunControl()) -> PriorManifest | None:
    """Train (or resume, or skip when up to date); None when stopped early by `control.stop_after`, and on ranks
    other than 0 (which write nothing)."""
    device = dist.init(resolve_device(config.device))
    with cuda_matmul_precision(device, config.tf32):
        return _run(config, control, device)


def _run(config: TrainPriorConfig, control: RunControl, device: torch.device) -> PriorManifest | None:
    capture_enabled(config.compile, device)  # --compile on without CUDA: refused before any folder work
    backbone = load_backbone(config.backbone, device)
    latents, latents_sha = read_manifest(config.latents, LatentsManifest)
    check_lineage(f"The latent cache {config.latents}", latents.input("backbone").sha256, config.backbone, backbone.manifest_sha256, config.latents)
    require_intact(config.latents, latents)
    coupling = label_coupling(config, backbone.model.num_layers)
    inputs = [
        InputRef(role="backbone", path=str(config.backbone), kind="backbone", sha256=backbone.manifest_sha256),
        InputRef(role="latents", path=str(config.latents), kind="latents", sha256=latents_sha),
    ]
    fingerprint = stage_fingerprint(config, inputs)
    existing = prepare_output(config.out, PriorManifest, fingerprint, control.force)
    if existing is not None:
        console().print(f"[green]train-prior: {config.out} is up to date[/green]")
        return existing
    config.out.mkdir(parents=True, exist_ok=True)
    data = LatentBatches(config.latents / "train.h5", device, config.seed)
    trainer = _PriorTrainer(config, backbone, data, device, fingerprint, coupling)
    if not trainer.train(control.stop_after):
        console().print(f"[yellow]train-prior: stopped at step {trainer.step}; re-run the same command to continue.[/yellow]")
        return None
    if not dist.is_main():
        return None  # rank 0 writes the prior (DESIGN §8)
    return _finalize(config, trainer, backbone, inputs, fingerprint, device)


def label_coupling(config: TrainPriorConfig, num_layers: int) -> LabelCoupling | None:
    """The label coupling of `--labels` (None without it), checked before any compute: the scheme must support it, the
    cache must hold labels (C = max label + 1 classes) and `--label-layers` must name the backbone's layers."""
    if not config.labels:
        return None
    priors.check_labels_supported(config.scheme)
    if dist.world_size() > 1:
        raise ConfigError("train-prior --labels runs in one process for now (its label statistics are not combined across "
                          "processes): run it without torchrun.")
    labels = read_labels(config.latents / "train.h5")
    known = labels[labels >= 0]
    if known.size == 0:
        raise DataError(f"--labels: the latent cache {config.latents} has no labels (every label is -1: the data set is unlabelled). "
                        "Cache a labelled data set (e.g. mnist:DIR, or a folder with one sub-folder per class), or drop --labels.")
    if known.size < labels.size:
        raise DataError(f"--labels: {labels.size - known.size} of {labels.size} cached latents in {config.latents} have no label (-1); "
                        "label coupling needs every training example labelled.")
    n_classes = int(known.max()) + 1
    if n_classes < 2:
        raise DataError(f"--labels: the latent cache {config.latents} holds a single class; label coupling needs at least two.")
    layers = config.label_layers or tuple(range(1, num_layers + 1))
    if max(layers) > num_layers:
        raise ConfigError(f"--label-layers {','.join(map(str, layers))}: the backbone has {num_layers} latent layers (z1 = bottom ... "
                          f"z{num_layers} = top).")
    if config.label_factors is not None and math.prod(config.label_factors) != n_classes:
        raise ConfigError(f"--label-factors {','.join(map(str, config.label_factors))}: the factors' sizes multiply to "
                          f"{math.prod(config.label_factors)}, but the latent cache {config.latents} holds {n_classes} classes "
                          f"(0 .. {n_classes - 1}). Give sizes whose product is {n_classes}.")
    dropout = config.label_dropout or 0.0
    return LabelCoupling(n_classes=n_classes, label_groups=tuple(sorted(i - 1 for i in layers)), null_class=dropout > 0,
                         label_dropout=dropout, label_weight=config.label_weight or DEFAULT_LABEL_WEIGHT,
                         factor_sizes=config.label_factors)


@dataclass
class _Progress:
    rollbacks: list[dict] = field(default_factory=list)
    lr_scale: float = 1.0


class _PriorTrainer:
    def __init__(self, config: TrainPriorConfig, backbone: LoadedBackbone, data: LatentBatches, device: torch.device, fingerprint: str,
                 coupling: LabelCoupling | None = None) -> None:
        self.config, self.backbone, self.data, self.device, self.fingerprint = config, backbone, data, device, fingerprint
        self.coupling = coupling
        self.prior = priors.for_training(config, backbone.model, device, config.compile, coupling)
        self.energy = self.prior.energy
        self.ema = copy.deepcopy(self.energy).requires_grad_(False)
        decay = config.weight_decay or 0.0
        self.optimizer = torch.optim.Adam(self.energy.parameters(), lr=config.lr, betas=(config.beta1, 0.999), weight_decay=decay)
        self.extras = self.prior.extra_modules()
        self.extra_emas = {name: copy.deepcopy(m).requires_grad_(False) for name, m in self.extras.items()}
        self.extra_optimizers = {name: torch.optim.Adam(m.parameters(), lr=config.lr, betas=(config.beta1, 0.999), weight_decay=decay)
                                 for name, m in self.extras.items()}
        self.generator = torch.Generator(device=device).manual_seed(config.seed)
        self.shard = _shard_of_batch(config.batch_size)
        self.step, self.wall_s, self.progress = 0, 0.0, _Progress()

    @property
    def noise(self) -> Noise:
        """Where the chains' draws come from: the generator, or this rank's rows of the global batch's draws from it."""
        if dist.world_size() == 1:
            return self.generator
        return NoiseRows(self.generator, *self.shard, self.config.batch_size)

    @property
    def checkpoints(self):
        return self.config.out / "checkpoints"

    @property
    def state(self) -> TrainingState:
        modules = {"energy": self.energy, "ema": self.ema} | self.extras | {f"ema-{n}": m for n, m in self.extra_emas.items()}
        optimizers = {"adam": self.optimizer} | {f"adam-{n}": o for n, o in self.extra_optimizers.items()}
        return TrainingState(modules, optimizers, {"noise": self.generator})

    def _extra(self) -> dict:
        return {"wall_s": self.wall_s, "lr_scale": self.progress.lr_scale, "rollbacks": self.progress.rollbacks}

    def _restore(self, folder) -> None:
        self.step, extra = load_checkpoint(folder, self.state)
        self.wall_s = float(extra["wall_s"])
        self.progress = _Progress(rollbacks=list(extra["rollbacks"]), lr_scale=float(extra["lr_scale"]))

    def newest_checkpoint(self) -> Path | None:
        """The checkpoint to continue from, chosen by rank 0 (which writes them) for every rank."""
        found = dist.main_decides(lambda: _path_text(latest_checkpoint(self.checkpoints, self.fingerprint)))
        return None if found is None else Path(found)

    def resume(self) -> None:
        found = self.newest_checkpoint()
        if found is None:
            if dist.is_main():  # the only writer (save_checkpoint, too, writes on rank 0 only)
                (self.config.out / "metrics.jsonl").unlink(missing_ok=True)
            save_checkpoint(self.checkpoints, 0, self.fingerprint, self.state, self._extra(), self.config.keep_checkpoints)
            return
        self._restore(found)
        restore_log(found, self.config.out / "metrics.jsonl", self.step)
        console().print(f"train-prior: resuming from {found.name} (step {self.step})")

    def negatives_and_loss(self, u0: Tensor, y: Tensor | None = None) -> tuple[Tensor | None, dict]:
        """One EBM loss on a batch of cached u0 `[B, D]` (labels y `[B]` for --labels) (the prior's own negatives and loss,
        plus the energy regulariser); returns (loss, log record), loss None on divergence. With several processes u0 is
        this rank's shard of the batch and every number is the whole batch's (`_batch_means`; --labels runs in one process)."""
        cfg = self.config
        outcome = self.prior.training_outcome(u0, self.noise, y)
        pos, neg, stats, loss = outcome.pos, outcome.neg, outcome.stats, outcome.loss
        if cfg.energy_l2 > 0:
            loss = loss + cfg.energy_l2 * (pos.pow(2) + neg.pow(2)).mean()
        finite = torch.isfinite(loss) & torch.isfinite(pos).all() & torch.isfinite(neg).all() & stats.all_finite().to(loss.device)
        for value in outcome.extra_losses.values():
            finite = finite & torch.isfinite(value)
        means = _batch_means(loss, outcome, finite, u0.shape[0])
        numbers = _on_host(means | {"energy_gap": means["pos"] - means["neg"]} | outcome.records)  # the update's one transfer
        extra = {f"loss_{name}": numbers[name] for name in outcome.extra_losses} | {name: numbers[name] for name in outcome.records}
        record = extra | {"loss": numbers["loss"], "energy_gap": numbers["energy_gap"], "neg_energy_pos": numbers["pos"],
                          "neg_energy_neg": numbers["neg"], "langevin_grad_norm": numbers["langevin_grad_norm"], "loss_gap": numbers["gap"]}
        finite = numbers["diverged"] == 0 and math.isfinite(numbers["loss"])  # a non-finite value on any rank
        runaway = abs(record["loss_gap"]) > cfg.max_energy_gap  # the gap in the loss's units (diffusion: G / s_t^2)
        # The modules' parameters are disjoint, so one backward of the sum gives each its own loss's gradient.
        total = means["loss"] + sum(means[name] for name in outcome.extra_losses) if outcome.extra_losses else means["loss"]
        return (total if finite and not runaway else None), record

    def learning_rate(self) -> float:
        """The rate of the next update: lr * lr_decay^epoch (an epoch is ceil(cached latents / batch) updates, Diff-EBM's
        per-epoch decay), times the rollbacks' halvings. A function of the step alone, so a resumed run continues it."""
        updates_per_epoch = math.ceil(len(self.data) / self.config.batch_size)
        decay = (self.config.lr_decay or 1.0) ** (self.step // updates_per_epoch)
        return self.config.lr * decay * self.progress.lr_scale

    def train_step(self) -> dict | None:
        """One update; None on divergence (non-finite values or a runaway energy gap; nothing is applied then)."""
        optimizers = [self.optimizer, *self.extra_optimizers.values()]
        lr = self.learning_rate()
        for optimizer in optimizers:
            for group in optimizer.param_groups:
                group["lr"] = lr
        if self.coupling is not None:
            loss, record = self.negatives_and_loss(*self.data.batch_with_labels(self.step, self.config.batch_size))
        else:
            loss, record = self.negatives_and_loss(self.data.batch(self.step, self.config.batch_size, self.shard))
        if loss is None:
            return None
        for optimizer in optimizers:
            optimizer.zero_grad(set_to_none=True)
        loss.backward()
        modules = [self.energy, *self.extras.values()]
        dist.sum_gradients(p for m in modules for p in m.parameters())  # each rank's backward reached only its rows' share
        record["grad_norm"] = torch.nn.utils.clip_grad_norm_(self.energy.parameters(), self.config.grad_clip)  # read when logged
        for module in self.extras.values():
            torch.nn.utils.clip_grad_norm_(module.parameters(), self.config.grad_clip)
        for optimizer in optimizers:
            optimizer.step()
        ema_update(self.ema, self.energy, self.config.ema_decay, self.step)
        for name, module in self.extras.items():
            ema_update(self.extra_emas[name], module, self.config.ema_decay, self.step)
        self.step += 1
        return {"step": self.step} | record | {"lr": self.optimizer.param_groups[0]["lr"]}

    def roll_back(self, record_step: int) -> None:
        """Divergence: back to the newest checkpoint with half the learning rate, or stop."""
        if len(self.progress.rollbacks) >= self.config.max_rollbacks:
            raise DivergenceError(
                f"train-prior diverged at step {record_step} (non-finite loss or energy, or |energy gap| > --max-energy-gap) after {len(self.progress.rollbacks)} "
                f"rollbacks with halved learning rates. Checkpoints are in {self.checkpoints}. Try a smaller --lr, a smaller "
                "step size (--step-size / --b2), --spectral-norm or --energy-l2, then re-run with --force."
            )
        rollbacks, scale = self.progress.rollbacks, self.progress.lr_scale * 0.5
        self._restore(self.newest_checkpoint())
        self.progress = _Progress(rollbacks=rollbacks + [{"diverged_at_step": record_step, "resumed_from_step": self.step, "lr_scale": scale}], lr_scale=scale)
        console().print(f"[yellow]train-prior: divergence at step {record_step}; rolled back to step {self.step}, learning rate x{scale:g}[/yellow]")

    def train(self, stop_after: int | None) -> bool:
        cfg = self.config
        self.resume()
        last = cfg.steps if stop_after is None else min(cfg.steps, stop_after)
        with progress_bar() as bar:
            task = bar.add_task(f"train-prior {cfg.scheme}", total=cfg.steps, completed=self.step, unit="step", info="")
            while self.step < last:
                t0 = time.perf_counter()
                record = self.train_step()
                self.wall_s += time.perf_counter() - t0
                if record is None:
                    self.roll_back(self.step + 1)
                    bar.update(task, completed=self.step)
                    continue
                bar.update(task, advance=1, info=f"gap {record['energy_gap']:+.3f}  loss {record['loss']:+.3f}")
                if self.step % cfg.log_every == 0 or self.step == last:
                    append_jsonl(cfg.out / "metrics.jsonl", _on_host(record) | {"wall_s": round(self.wall_s, 3)})
                if self.step % cfg.checkpoint_every == 0 or self.step == last:
                    save_checkpoint(self.checkpoints, self.step, self.fingerprint, self.state, self._extra(), cfg.keep_checkpoints,
                                    log=cfg.out / "metrics.jsonl")
        return self.step >= cfg.steps


def _shard_of_batch(batch_size: int) -> tuple[int, int]:
    """This rank's rows `[start, stop)` of every global batch of `batch_size` rows; every rank needs at least one."""
    if batch_size < dist.world_size():
        raise ConfigError(f"train-prior: a batch of {batch_size} latents cannot be shared by {dist.world_size()} processes; "
                          "raise --batch-size or use fewer processes.")
    return dist.shard(batch_size)


def _batch_means(loss: Tensor, outcome: priors.TrainingOutcome, finite: Tensor, rows: int) -> dict[str, Tensor]:
    """The batch means of the step's numbers (scalars `[]` by name, on the device): the loss (differentiable), the extra
    modules' losses (differentiable), pos, neg, gap, the last Langevin step's gradient norm, and `diverged` (> 0 when
    any rank saw a non-finite value; `finite` is this rank's flag `[]`). Each is a mean over rows of per-row terms, so
    the shards' means are combined in one all_reduce (`dist.mean_of_shards`); in one process these are this process's
    values, unchanged. Nothing is read on the host here."""
    stats = outcome.stats
    last_grad_norm = stats.grad_norm[-1] if stats.n_steps else loss.new_zeros(())
    named = {"loss": loss} | outcome.extra_losses | {
        "pos": outcome.pos.detach().mean(), "neg": outcome.neg.detach().mean(), "gap": outcome.gap,
        "langevin_grad_norm": last_grad_norm, "diverged": (~finite).to(loss.dtype)}
    values = torch.stack([v.reshape(()).to(device=loss.device, dtype=loss.dtype) for v in named.values()])
    return dict(zip(named, dist.mean_of_shards(values, rows).unbind()))


def _on_host(values: dict) -> dict:
    """The dict with its tensor values `[]` read as Python floats in one device-to-host transfer (others kept as they are)."""
    names = [name for name, value in values.items() if isinstance(value, Tensor)]
    if not names:
        return dict(values)
    read = torch.stack([values[name].detach().reshape(()).float() for name in names]).tolist()
    return values | dict(zip(names, read))


def _path_text(path: Path | None) -> str | None:
    return None if path is None else str(path)


def _finalize(config: TrainPriorConfig, trainer: _PriorTrainer, backbone: LoadedBackbone, inputs: list[InputRef], fingerprint: str, device: torch.device) -> PriorManifest:
    out = config.out
    save_tensors(out / ENERGY_NAME, trainer.ema.state_dict())
    extra_files = [f"{name}.safetensors" for name in trainer.extra_emas]
    for name, ema in trainer.extra_emas.items():
        save_tensors(out / f"{name}.safetensors", ema.state_dict())
    records = [line for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
    tail = [json.loads(r) for r in records[-10:]]
    metrics = {
        "train_wall_s": round(trainer.wall_s, 2),
        "steps_per_s": round(config.steps / max(trainer.wall_s, 1e-9), 3),
        "final_energy_gap": sum(r["energy_gap"] for r in tail) / max(len(tail), 1),
        "final_loss": sum(r["loss"] for r in tail) / max(len(tail), 1),
        "rollbacks": trainer.progress.rollbacks,
        "n_train_latents": len(trainer.data),
        "latents_in_memory": trainer.data.in_memory,
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "peak_cuda_mb": peak_cuda_mb(device),
        "device": str(device),
    }
    manifest = PriorManifest(
        **common_fields(fingerprint),
        config=config,
        inputs=inputs,
        outputs=[describe_file(out, n) for n in (ENERGY_NAME, *extra_files, "metrics.jsonl")],
        metrics=metrics,
        group_dims=backbone.model.group_dims,
        group_shapes=backbone.model.group_shapes,
        **trainer.prior.manifest_fields(),
        label_coupling=trainer.coupling,
    )
    write_manifest(out, manifest)
    console().print(f"[green]train-prior: done[/green] {config.scheme}, energy gap {metrics['final_energy_gap']:+.4f}, {metrics['steps_per_s']:.2f} steps/s -> {out}")
    return manifest
