"""Resumable checkpoints: `checkpoints/ckpt-000500/` with model, EMA, optimizer and RNG state.

Each checkpoint folder holds safetensors files, a copy of the run's metrics log as it was at that
step, and a `state.json` written last (its commit marker) with the step, the stage fingerprint,
any JSON-able extras (e.g. the data position) and the size and sha256 of every file. Resume = find
the newest complete, intact checkpoint with the same fingerprint and load it; a damaged newest
checkpoint falls back to the one before (and says so).
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

from hebmctl.errors import ArtifactError
from hebmctl.io.atomic import write_text, write_with
from hebmctl.io.console import console, truncate_jsonl
from hebmctl.io.hashing import sha256_file
from hebmctl.io.state import (
    generator_state,
    load_tensors,
    optimizer_from_tensors,
    optimizer_to_tensors,
    save_tensors,
    set_generator_state,
)
from hebmctl.runtime import is_main_process

STATE_NAME = "state.json"
LOG_NAME = "metrics.jsonl"


@dataclass
class TrainingState:
    """Everything a training loop needs to continue exactly where it stopped."""

    modules: dict[str, torch.nn.Module]
    optimizers: dict[str, torch.optim.Optimizer]
    generators: dict[str, torch.Generator]


def checkpoint_dir(root: Path, step: int) -> Path:
    return Path(root) / f"ckpt-{step:06d}"


def save_checkpoint(root: Path, step: int, fingerprint: str, state: TrainingState, extra: dict[str, Any], keep: int,
                    log: Path | None = None) -> Path:
    """Write checkpoint `step` (state.json last), with a copy of the metrics `log` when given, then delete all but
    the newest `keep`. Only rank 0 writes (the ranks hold the same state, DESIGN §8); the others just return the
    folder's name."""
    folder = checkpoint_dir(root, step)
    if not is_main_process():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    if log is not None and Path(log).is_file():
        write_with(folder / LOG_NAME, lambda tmp: shutil.copyfile(log, tmp))
    for name, module in state.modules.items():
        save_tensors(folder / f"{name}.safetensors", module.state_dict())
    for name, optimizer in state.optimizers.items():
        tensors, meta = optimizer_to_tensors(optimizer)
        save_tensors(folder / f"optimizer-{name}.safetensors", tensors, metadata={"optimizer": meta})
    rng = {name: generator_state(gen) for name, gen in state.generators.items()}
    rng["torch_cpu_default"] = torch.get_rng_state()
    save_tensors(folder / "rng.safetensors", rng)
    kept = sorted([*folder.glob("*.safetensors"), *folder.glob(LOG_NAME)])
    files = {p.name: {"bytes": p.stat().st_size, "sha256": sha256_file(p)} for p in kept}
    write_text(folder / STATE_NAME, json.dumps({"step": step, "fingerprint": fingerprint, "extra": extra, "files": files}, indent=2))
    _prune(root, keep)
    return folder


def restore_log(checkpoint: Path, log: Path, step: int) -> None:
    """Put the metrics `log` back as it was when `checkpoint` was written, from the checkpoint's copy (checked with
    its other files): lines written after it go, and lines damaged since come back intact, so a resumed run's log
    and the metrics its manifest takes from it equal an uninterrupted run's. A checkpoint written before copies
    were kept: drop the lines past its `step`."""
    if not is_main_process():
        return
    copy = Path(checkpoint) / LOG_NAME
    if copy.is_file():
        write_with(Path(log), lambda tmp: shutil.copyfile(copy, tmp))
    else:
        truncate_jsonl(log, step)


def _complete_checkpoints(root: Path) -> list[Path]:
    if not Path(root).is_dir():
        return []
    return sorted(p for p in Path(root).glob("ckpt-*") if (p / STATE_NAME).is_file())


def _prune(root: Path, keep: int) -> None:
    for old in _complete_checkpoints(root)[:-keep]:
        shutil.rmtree(old)


def checkpoint_problems(folder: Path) -> list[str]:
    """Why a checkpoint cannot be loaded (unreadable state.json, a file missing, truncated or changed); empty if intact.

    Checkpoints written before state.json listed its files are checked by parsing each file's header.
    """
    try:
        info = json.loads((folder / STATE_NAME).read_text())
        files = info.get("files")
        int(info["step"]), str(info["fingerprint"])
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        return [f"{STATE_NAME} is unreadable ({exc})"]
    if files is None:
        problems = []
        for path in sorted(folder.glob("*.safetensors")):
            try:
                with safe_open(str(path), framework="pt"):
                    pass
            except Exception as exc:  # noqa: BLE001 - safetensors raises several types for a corrupt header
                problems.append(f"{path.name}: unreadable ({exc})")
        return problems
    problems = []
    for name, expected in files.items():
        path = folder / name
        if not path.is_file():
            problems.append(f"{name}: missing")
        elif path.stat().st_size != expected["bytes"]:
            problems.append(f"{name}: size {path.stat().st_size} bytes, {STATE_NAME} says {expected['bytes']}")
        elif sha256_file(path) != expected["sha256"]:
            problems.append(f"{name}: sha256 differs from {STATE_NAME}")
    return problems


def latest_checkpoint(root: Path, fingerprint: str) -> Path | None:
    """The newest complete, intact checkpoint of this exact run, or None if there is none.

    A damaged checkpoint (e.g. a file truncated by a full disk) is skipped, with a message, for the
    one before it. Checkpoints of another config are an error, not silently ignored: resuming them
    would mix runs.
    """
    found = _complete_checkpoints(root)
    damaged: list[str] = []
    for folder in reversed(found):
        problems = checkpoint_problems(folder)
        if problems:
            damaged.append(f"{folder.name} ({'; '.join(problems)})")
            continue
        recorded = json.loads((folder / STATE_NAME).read_text())["fingerprint"]
        if recorded != fingerprint:
            raise ArtifactError(
                f"{root} holds checkpoints of a run with other settings or inputs (fingerprint {recorded[:12]}... vs "
                f"{fingerprint[:12]}... now), so they cannot be resumed. Re-run with the original settings to resume, "
                "or pass --force to discard them and start over."
            )
        if damaged:
            console().print(f"[yellow]warning: damaged checkpoint {', '.join(damaged)}; resuming from the previous intact "
                            f"checkpoint {folder.name} instead.[/yellow]")
        return folder
    if damaged:
        raise ArtifactError(
            f"Every checkpoint in {root} is damaged: {', '.join(damaged)}. Nothing can be resumed from them: delete {root} "
            "and re-run the same command to start this run over."
        )
    return None


def load_checkpoint(folder: Path, state: TrainingState) -> tuple[int, dict[str, Any]]:
    """Restore modules, optimizers and generators in place; returns (step, extra)."""
    for name, module in state.modules.items():
        tensors, _ = load_tensors(folder / f"{name}.safetensors", device=_device_of(module))
        module.load_state_dict(tensors)
    for name, optimizer in state.optimizers.items():
        tensors, meta = load_tensors(folder / f"optimizer-{name}.safetensors", device=_optimizer_device(optimizer))
        optimizer_from_tensors(optimizer, tensors, meta["optimizer"])
    rng, _ = load_tensors(folder / "rng.safetensors")
    for name, gen in state.generators.items():
        if rng[name].numel() != gen.get_state().numel():
            # A CPU generator's state (Mersenne twister) and a CUDA one's (Philox) differ in size.
            raise ArtifactError(
                f"{folder} was written on another kind of device: its random-generator state '{name}' does not fit "
                f"this run's {gen.device.type} generator, and checkpoints resume bitwise only on the device type "
                "that wrote them. Re-run with that --device (cpu or cuda) to resume, or pass --force to start over."
            )
        set_generator_state(gen, rng[name])
    torch.set_rng_state(rng["torch_cpu_default"])
    info = json.loads((folder / STATE_NAME).read_text())
    return int(info["step"]), info["extra"]


def _device_of(module: torch.nn.Module) -> torch.device:
    for tensor in module.state_dict().values():
        return tensor.device
    return torch.device("cpu")


def _optimizer_device(optimizer: torch.optim.Optimizer) -> torch.device:
    return optimizer.param_groups[0]["params"][0].device
