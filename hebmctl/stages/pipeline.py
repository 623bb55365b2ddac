"""`hebmctl pipeline`: every stage in order; each skips itself when complete and up to date."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from hebmctl.errors import HebmctlError
from hebmctl.io.console import console
from hebmctl.schemas import CacheLatentsConfig, PretrainConfig, StageConfig

DEMO_CONFIG = "demo.toml"
"""Built-in pipeline config (package data): the digits demo on builtin:mnist-10k."""


@dataclass(frozen=True)
class PipelinePlan:
    pretrain: PretrainConfig
    cache_latents: CacheLatentsConfig

    def stages(self) -> list[tuple[str, StageConfig]]:
        return [("pretrain", self.pretrain), ("cache_latents", self.cache_latents)]


def _read_toml(path: Path | None) -> dict[str, Any]:
    if path is None:
        return tomllib.loads(resources.files("hebmctl").joinpath(DEMO_CONFIG).read_text())
    try:
        return tomllib.loads(Path(path).read_text())
    except FileNotFoundError as exc:
        raise HebmctlError(f"Pipeline config {path} does not exist.") from exc
    except tomllib.TOMLDecodeError as exc:
        raise HebmctlError(f"Pipeline config {path} is not valid TOML ({exc}).") from exc


def load_plan(path: Path | None, run: Path | None) -> PipelinePlan:
    """Resolve every stage config from the TOML tables; `run` (or the file's `run`) fills default paths."""
    data = _read_toml(path)
    known = {"run", "pretrain", "cache_latents"}
    unknown = set(data) - known
    if unknown:
        raise HebmctlError(f"Unknown entries in the pipeline config: {', '.join(sorted(unknown))}. Known: {', '.join(sorted(known))}.")
    run_dir = run or data.get("run") or "runs/default"
    return PipelinePlan(
        pretrain=PretrainConfig.model_validate({"run": run_dir} | data.get("pretrain", {})),
        cache_latents=CacheLatentsConfig.model_validate({"run": run_dir} | data.get("cache_latents", {})),
    )


def run(plan: PipelinePlan, force: bool = False) -> None:
    from hebmctl.stages import cache_latents, pretrain

    console().rule("[bold]pretrain")
    if pretrain.run(plan.pretrain, pretrain.RunControl(force=force)) is None:
        return
    console().rule("[bold]cache-latents")
    cache_latents.run(plan.cache_latents, cache_latents.RunControl(force=force))
    console().rule(f"[bold green]pipeline complete: {plan.pretrain.run}")
