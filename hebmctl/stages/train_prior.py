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
"""

from __future__ import annotations

import copy
import json
import time
from dataclasses import dataclass, field

import torch
from torch import Tensor

from hebmctl import priors
from hebmctl.errors import ConfigError, DataError, DivergenceError
from hebmctl.io.checkpoints import TrainingState, latest_checkpoint, load_checkpoint, save_checkpoint
from hebmctl.io.console import append_jsonl, console, progress_bar, truncate_jsonl
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
from hebmctl.models.ebm_losses import energy_gap
from hebmctl.models.ema import ema_update
from hebmctl.runtime import peak_cuda_mb, peak_rss_mb, resolve_device
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
    """Train (or resume, or skip when up to date); None when stopped early by `control.stop_after`."""
    device = resolve_device(config.device)
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
    return _finalize(config, trainer, backbone, inputs, fingerprint, device)


def label_coupling(config: TrainPriorConfig, num_layers: int) -> LabelCoupling | None:
    """The label coupling of `--labels` (None without it), checked before any compute: the scheme must support it, the
    cache must hold labels (C = max label + 1 classes) and `--label-layers` must name the backbone's layers."""
    if not config.labels:
        return None
    priors.check_labels_supported(config.scheme)
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
    dropout = config.label_dropout or 0.0
    return LabelCoupling(n_classes=n_classes, label_groups=tuple(sorted(i - 1 for i in layers)), null_class=dropout > 0,
                         label_dropout=dropout, label_weight=config.label_weight or DEFAULT_LABEL_WEIGHT)


@dataclass
class _Progress:
    rollbacks: list[dict] = field(default_factory=list)
    lr_scale: float = 1.0


class _PriorTrainer:
    def __init__(self, config: TrainPriorConfig, backbone: LoadedBackbone, data: LatentBatches, device: torch.device, fingerprint: str,
                 coupling: LabelCoupling | None = None) -> None:
        self.config, self.backbone, self.data, self.device, self.fingerprint = config, backbone, data, device, fingerprint
        self.coupling = coupling
        self.prior = priors.for_training(config, backbone.model, device, coupling)
        self.energy = self.prior.energy
        self.ema = copy.deepcopy(self.energy).requires_grad_(False)
        self.optimizer = torch.optim.Adam(self.energy.parameters(), lr=config.lr, betas=(config.beta1, 0.999))
        self.extras = self.prior.extra_modules()
        self.extra_emas = {name: copy.deepcopy(m).requires_grad_(False) for name, m in self.extras.items()}
        self.extra_optimizers = {name: torch.optim.Adam(m.parameters(), lr=config.lr, betas=(config.beta1, 0.999)) for name, m in self.extras.items()}
        self.generator = torch.Generator(device=device).manual_seed(config.seed)
        self.step, self.wall_s, self.progress = 0, 0.0, _Progress()

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

    def resume(self) -> None:
        found = latest_checkpoint(self.checkpoints, self.fingerprint)
        if found is None:
            (self.config.out / "metrics.jsonl").unlink(missing_ok=True)
            save_checkpoint(self.checkpoints, 0, self.fingerprint, self.state, self._extra(), self.config.keep_checkpoints)
            return
        self._restore(found)
        truncate_jsonl(self.config.out / "metrics.jsonl", self.step)
        console().print(f"train-prior: resuming from {found.name} (step {self.step})")

    def negatives_and_loss(self, u0: Tensor, y: Tensor | None = None) -> tuple[Tensor | None, dict]:
        """One EBM loss on a batch of cached u0 `[B, D]` (labels y `[B]` for --labels) (the prior's own negatives and loss,
        plus the energy regulariser); returns (loss, log record), loss None on divergence."""
        cfg = self.config
        outcome = self.prior.training_outcome(u0, self.generator, y)
        pos, neg, stats, loss = outcome.pos, outcome.neg, outcome.stats, outcome.loss
        if cfg.energy_l2 > 0:
            loss = loss + cfg.energy_l2 * (pos.pow(2) + neg.pow(2)).mean()
        extra = {f"loss_{name}": float(v.detach()) for name, v in outcome.extra_losses.items()} | outcome.records
        record = extra | {"loss": loss.item(), "energy_gap": energy_gap(pos.detach(), neg.detach()), "neg_energy_pos": pos.mean().item(),
                  "neg_energy_neg": neg.mean().item(), "langevin_grad_norm": float(stats.grad_norm[-1]) if stats.n_steps else 0.0,
                  "loss_gap": outcome.gap}
        finite = torch.isfinite(loss) and torch.isfinite(pos).all() and torch.isfinite(neg).all() and stats.is_finite()
        finite = finite and all(torch.isfinite(v) for v in outcome.extra_losses.values())
        runaway = abs(outcome.gap) > cfg.max_energy_gap  # the gap in the loss's units (diffusion: G / s_t^2)
        # The modules' parameters are disjoint, so one backward of the sum gives each its own loss's gradient.
        total = loss + sum(outcome.extra_losses.values()) if outcome.extra_losses else loss
        return (total if finite and not runaway else None), record

    def train_step(self) -> dict | None:
        """One update; None on divergence (non-finite values or a runaway energy gap; nothing is applied then)."""
        optimizers = [self.optimizer, *self.extra_optimizers.values()]
        for optimizer in optimizers:
            for group in optimizer.param_groups:
                group["lr"] = self.config.lr * self.progress.lr_scale
        if self.coupling is not None:
            loss, record = self.negatives_and_loss(*self.data.batch_with_labels(self.step, self.config.batch_size))
        else:
            loss, record = self.negatives_and_loss(self.data.batch(self.step, self.config.batch_size))
        if loss is None:
            return None
        for optimizer in optimizers:
            optimizer.zero_grad(set_to_none=True)
        loss.backward()
        record["grad_norm"] = float(torch.nn.utils.clip_grad_norm_(self.energy.parameters(), self.config.grad_clip))
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
        self._restore(latest_checkpoint(self.checkpoints, self.fingerprint))
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
                    append_jsonl(cfg.out / "metrics.jsonl", record | {"wall_s": round(self.wall_s, 3)})
                if self.step % cfg.checkpoint_every == 0 or self.step == last:
                    save_checkpoint(self.checkpoints, self.step, self.fingerprint, self.state, self._extra(), cfg.keep_checkpoints)
        return self.step >= cfg.steps


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
