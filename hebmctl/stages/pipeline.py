"""`hebmctl pipeline`: every stage in order; each skips itself when complete and up to date.

Config (TOML): top-level `run = DIR`; tables `[pretrain]`, `[cache_latents]`; `[[train_prior]]`
(one table per prior; a single `[train_prior]` table also works); `[sample]` (settings shared by
the Gaussian prior's samples and each trained prior's). The last step writes
`RUN/samples/comparison.png`: the grids side by side.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from hebmctl.errors import HebmctlError
from hebmctl.io.console import console
from hebmctl.io.images import save_png
from hebmctl.schemas import CacheLatentsConfig, PretrainConfig, SampleConfig, StageConfig, TrainPriorConfig

DEMO_CONFIG = "demo.toml"
"""Built-in pipeline config (package data): the digits demo on builtin:mnist-10k."""

KNOWN_TABLES = {"run", "pretrain", "cache_latents", "train_prior", "sample"}


@dataclass(frozen=True)
class PipelinePlan:
    pretrain: PretrainConfig
    cache_latents: CacheLatentsConfig
    priors: tuple[TrainPriorConfig, ...]
    samples: tuple[SampleConfig, ...]

    def stages(self) -> list[tuple[str, StageConfig]]:
        named: list[tuple[str, StageConfig]] = [("pretrain", self.pretrain), ("cache_latents", self.cache_latents)]
        named += [(f"train_prior:{p.name}", p) for p in self.priors]
        named += [(f"sample:{s.prior}", s) for s in self.samples]
        return named


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
    unknown = set(data) - KNOWN_TABLES
    if unknown:
        raise HebmctlError(f"Unknown entries in the pipeline config: {', '.join(sorted(unknown))}. Known: {', '.join(sorted(KNOWN_TABLES))}.")
    run_dir = str(run or data.get("run") or "runs/default")
    prior_tables = data.get("train_prior", [])
    prior_tables = [prior_tables] if isinstance(prior_tables, dict) else prior_tables
    priors = tuple(TrainPriorConfig.model_validate({"run": run_dir} | t) for t in prior_tables)
    sample_table = data.get("sample", {})
    samples = tuple(SampleConfig.model_validate({"run": run_dir} | sample_table | {"prior": prior})
                    for prior in ["gaussian", *(str(p.out) for p in priors)])
    return PipelinePlan(
        pretrain=PretrainConfig.model_validate({"run": run_dir} | data.get("pretrain", {})),
        cache_latents=CacheLatentsConfig.model_validate({"run": run_dir} | data.get("cache_latents", {})),
        priors=priors,
        samples=samples,
    )


def run(plan: PipelinePlan, force: bool = False) -> None:
    from hebmctl.stages import cache_latents, pretrain, sample, train_prior

    console().rule("[bold]pretrain")
    if pretrain.run(plan.pretrain, pretrain.RunControl(force=force)) is None:
        return
    console().rule("[bold]cache-latents")
    cache_latents.run(plan.cache_latents, cache_latents.RunControl(force=force))
    for prior in plan.priors:
        console().rule(f"[bold]train-prior {prior.name}")
        train_prior.run(prior, train_prior.RunControl(force=force))
    for config in plan.samples:
        console().rule(f"[bold]sample {Path(config.prior).name}")
        sample.run(config, sample.RunControl(force=force))
    if plan.samples:
        path = Path(plan.pretrain.run) / "samples" / "comparison.png"
        write_comparison(path, [(Path(c.prior).name, c.out / "grid.png") for c in plan.samples])
        console().print(f"side-by-side grids: {path}")
    console().rule(f"[bold green]pipeline complete: {plan.pretrain.run}")


def write_comparison(path: Path, grids: list[tuple[str, Path]], gap_px: int = 16, label_px: int = 18) -> None:
    """The sample grids side by side, each titled with its prior's name."""
    images = [Image.open(p).convert("RGB") for _, p in grids]
    width = sum(im.width for im in images) + gap_px * (len(images) - 1)
    height = max(im.height for im in images) + label_px
    canvas = Image.new("RGB", (width, height), "white")
    draw, x = ImageDraw.Draw(canvas), 0
    for (name, _), image in zip(grids, images):
        draw.text((x + 2, 2), f"{name} prior", fill="black")
        canvas.paste(image, (x, label_px))
        x += image.width + gap_px
    save_png(path, np.asarray(canvas))
