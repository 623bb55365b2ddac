"""Model, optimizer and RNG state as safetensors files. Nothing is pickled; nothing is torch.load-ed.

Optimizer state is flattened to tensors named `state/<param id>/<key>`; everything that is not a
tensor (param groups, scalar entries) goes to the file's JSON metadata under `optimizer`.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from hebmctl.errors import ArtifactError
from hebmctl.io.atomic import atomic_path


def save_tensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    """Atomically write tensors (moved to CPU, made contiguous) to a safetensors file."""
    cpu = {name: t.detach().to("cpu").contiguous() for name, t in tensors.items()}
    with atomic_path(Path(path)) as tmp:
        try:
            save_file(cpu, str(tmp), metadata=metadata)
        except SafetensorError as exc:  # the Rust writer reports a full disk as "I/O error: ... (os error 28)"
            raise _as_os_error(exc, tmp) from exc


def _as_os_error(exc: Exception, path: Path) -> Exception:
    """A safetensors I/O failure as the OSError it wraps (errno from "(os error N)"), so the CLI can explain it."""
    found = re.search(r"os error (\d+)", str(exc))
    if found is None:
        return exc
    code = int(found.group(1))
    return OSError(code, os.strerror(code), str(path))


def load_tensors(path: Path, device: str | torch.device = "cpu") -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Read a safetensors file: (tensors, metadata). A missing or corrupt file raises ArtifactError."""
    path = Path(path)
    if not path.is_file():
        raise ArtifactError(f"Expected the weights file {path}, but it does not exist. Re-run the stage that writes it.")
    try:
        tensors = load_file(str(path), device=str(device))
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
    except (SafetensorError, OSError, ValueError) as exc:
        raise ArtifactError(
            f"Could not read {path} as a safetensors file ({exc}). The file is corrupt or was not written "
            "by hebmctl; delete the artifact folder and re-run the stage that writes it."
        ) from exc
    return tensors, metadata


def load_module_state(module: torch.nn.Module, path: Path) -> None:
    """Load weights into `module`, with a clear error when names or shapes do not match."""
    tensors, _ = load_tensors(path, device=next(module.parameters()).device)
    try:
        module.load_state_dict(tensors, strict=True)
    except RuntimeError as exc:
        raise ArtifactError(
            f"The weights in {path} do not fit the model built from the manifest's config ({exc}). "
            "The artifact folder was probably edited by hand; re-run the stage that writes it."
        ) from exc


def optimizer_to_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], str]:
    """Flatten an optimizer's state_dict to (tensors, JSON metadata)."""
    state_dict = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, Any] = {}
    for param_id, entries in state_dict["state"].items():
        for key, value in entries.items():
            name = f"state/{param_id}/{key}"
            if isinstance(value, torch.Tensor):
                tensors[name] = value
            else:
                scalars[name] = value
    meta = {"param_groups": state_dict["param_groups"], "scalars": scalars}
    return tensors, json.dumps(meta)


def optimizer_from_tensors(optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta_json: str) -> None:
    """Inverse of `optimizer_to_tensors`: rebuild the state_dict and load it."""
    meta = json.loads(meta_json)
    state: dict[int, dict[str, Any]] = {}
    for name, value in list(tensors.items()) + list(meta["scalars"].items()):
        _, param_id, key = name.split("/", 2)
        state.setdefault(int(param_id), {})[key] = value
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


def generator_state(generator: torch.Generator) -> torch.Tensor:
    """A generator's full state as a uint8 CPU tensor (storable in safetensors)."""
    return generator.get_state().to("cpu")


def set_generator_state(generator: torch.Generator, state: torch.Tensor) -> None:
    generator.set_state(state.to("cpu", dtype=torch.uint8))
