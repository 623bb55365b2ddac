"""Stage `train-prior-sweep`: N diffusion priors trained together in one process (issue 13 item 2), e.g. one per held-out
digit and seed of the MNIST anomaly benchmark; the batched arithmetic is `hebmctl.priors.sweep.DiffusionSweep`.

Each prior gets the artifact `train-prior` would write for its config (EMA weights `energy.safetensors`,
`metrics.jsonl`, a prior manifest with the same fingerprint): the sweep changes how the numbers are computed, not
which, and prior i equals the same prior trained alone within float rounding (tests/priors/test_sweep.py), as
several processes do (DESIGN §8). The manifest records `metrics.batched_sweep`. Up-to-date priors are skipped;
the others train from step 0 (no checkpoints: a stopped sweep starts again) and there is no rollback on
divergence (the sweep stops and names the prior).
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass

import torch

from hebmctl.errors import ConfigError
from hebmctl.io.console import append_jsonl, console, progress_bar
from hebmctl.io.latent_batches import LatentBatches
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
from hebmctl.io.output import output_session
from hebmctl.io.state import save_tensors
from hebmctl.priors.sweep import DiffusionSweep, check_sweepable
from hebmctl.runtime import cuda_matmul_precision, peak_cuda_mb, peak_rss_mb, resolve_device
from hebmctl.schemas.common import InputRef
from hebmctl.schemas.latents import LatentsManifest
from hebmctl.schemas.prior import PriorManifest, TrainPriorConfig
from hebmctl.stages.artifacts import ENERGY_NAME, LoadedBackbone, load_backbone

RECORD_KEYS = ("loss", "loss_gap", "neg_energy_pos", "neg_energy_neg", "grad_norm")
"""Columns of DiffusionSweep.update's statistics (the sixth, the finite flag, is checked there)."""


@dataclass(frozen=True)
class _Member:
    """One prior of the sweep: its config, backbone, latent batches, lineage and fingerprint."""

    config: TrainPriorConfig
    backbone: LoadedBackbone
    data: LatentBatches
    inputs: list[InputRef]
    fingerprint: str


def run(configs: Sequence[TrainPriorConfig], force: bool = False) -> list[PriorManifest]:
    """Train every prior of `configs` that is not up to date, all at once; returns one manifest per config, in order."""
    if len({str(c.out) for c in configs}) != len(configs):
        raise ConfigError("The priors of a sweep need distinct output folders.")
    check_sweepable(configs)  # before any folder is touched
    with ExitStack() as stack:
        for config in configs:
            stack.enter_context(output_session(config.out))
        return _run(configs, force)


def _run(configs: Sequence[TrainPriorConfig], force: bool) -> list[PriorManifest]:
    device = resolve_device(configs[0].device)
    done: dict[int, PriorManifest] = {}
    members: dict[int, _Member] = {}
    for i, config in enumerate(configs):
        member = _open(config, device)
        existing = prepare_output(config.out, PriorManifest, member.fingerprint, force)
        if existing is not None:
            done[i] = existing
            continue
        config.out.mkdir(parents=True, exist_ok=True)
        members[i] = member
    if members:
        console().print(f"train-prior-sweep: {len(members)} priors at once ({len(done)} up to date)")
        with cuda_matmul_precision(device, configs[0].tf32):  # the CLI gives every run the same train-prior options
            done |= dict(zip(members, _train(list(members.values()), device), strict=True))
    return [done[i] for i in range(len(configs))]


def _open(config: TrainPriorConfig, device: torch.device) -> _Member:
    """Validated inputs of one prior (as train-prior checks them) and its fingerprint."""
    backbone = load_backbone(config.backbone, device)
    latents, latents_sha = read_manifest(config.latents, LatentsManifest)
    check_lineage(f"The latent cache {config.latents}", latents.input("backbone").sha256, config.backbone, backbone.manifest_sha256,
                  config.latents)
    require_intact(config.latents, latents)
    inputs = [InputRef(role="backbone", path=str(config.backbone), kind="backbone", sha256=backbone.manifest_sha256),
              InputRef(role="latents", path=str(config.latents), kind="latents", sha256=latents_sha)]
    data = LatentBatches(config.latents / "train.h5", device, config.seed)
    return _Member(config, backbone, data, inputs, stage_fingerprint(config, inputs))


def _train(members: list[_Member], device: torch.device) -> list[PriorManifest]:
    first = members[0].config
    sweep = DiffusionSweep([m.config for m in members], [m.backbone.model for m in members], device, first.compile)
    for m in members:
        (m.config.out / "metrics.jsonl").unlink(missing_ok=True)
    wall_s = 0.0
    with progress_bar() as bar:
        task = bar.add_task(f"train-prior-sweep x{len(members)}", total=first.steps, unit="step", info="")
        for step in range(first.steps):
            t0 = time.perf_counter()
            u0 = torch.stack([m.data.batch(step, first.batch_size) for m in members])  # [N, B, D]
            stats = sweep.update(u0, step)
            wall_s += time.perf_counter() - t0
            bar.update(task, advance=1)
            if (step + 1) % first.log_every == 0 or step + 1 == first.steps:
                _log(members, stats, step + 1, first.lr, wall_s)
    return [_finalize(m, sweep, i, wall_s, device) for i, m in enumerate(members)]


def _log(members: list[_Member], stats: torch.Tensor, step: int, lr: float, wall_s: float) -> None:
    """One metrics.jsonl line per prior, with train-prior's keys (energy_gap = mean G(pos) - mean G(neg))."""
    for m, row in zip(members, stats.tolist(), strict=True):
        record = dict(zip(RECORD_KEYS, row[:5], strict=True))
        record["energy_gap"] = record["neg_energy_pos"] - record["neg_energy_neg"]
        append_jsonl(m.config.out / "metrics.jsonl", {"step": step} | record | {"lr": lr, "wall_s": round(wall_s, 3)})


def _finalize(member: _Member, sweep: DiffusionSweep, index: int, wall_s: float, device: torch.device) -> PriorManifest:
    config, out = member.config, member.config.out
    save_tensors(out / ENERGY_NAME, sweep.energy_state(index))
    tail = [json.loads(r) for r in (out / "metrics.jsonl").read_text().splitlines()[-10:] if r.strip()]
    metrics = {
        "train_wall_s": round(wall_s, 2),
        "steps_per_s": round(config.steps / max(wall_s, 1e-9), 3),
        "final_energy_gap": sum(r["energy_gap"] for r in tail) / max(len(tail), 1),
        "final_loss": sum(r["loss"] for r in tail) / max(len(tail), 1),
        "rollbacks": [],
        "n_train_latents": len(member.data),
        "latents_in_memory": member.data.in_memory,
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "peak_cuda_mb": peak_cuda_mb(device),
        "device": str(device),
        "batched_sweep": {"priors": sweep.n, "index": index},
    }
    manifest = PriorManifest(**common_fields(member.fingerprint), config=config, inputs=member.inputs,
                             outputs=[describe_file(out, n) for n in (ENERGY_NAME, "metrics.jsonl")], metrics=metrics,
                             group_dims=member.backbone.model.group_dims, group_shapes=member.backbone.model.group_shapes,
                             schedule=sweep.schedule.to_dict(), step_sizes=[float(s) for s in sweep.step_sizes_sq.sqrt()])
    write_manifest(out, manifest)
    return manifest
