"""`hebmctl pipeline`: every stage in order; each skips itself when complete and up to date.

Config (TOML): top-level `run = DIR`; tables `[pretrain]`, `[cache_latents]`; `[[train_prior]]`
(one table per prior; a single `[train_prior]` table also works); `[sample]` (settings shared by
the Gaussian prior's samples and each trained prior's), which writes `RUN/samples/comparison.png`:
the grids side by side. Optional evaluation tables, each run after sampling: `[eval_recon]`,
`[eval_probe]` (once), `[eval_fid]` (for the Gaussian prior, the reconstructions and every trained
prior, at the same N), `[eval_ood]` and `[eval_anomaly]` (for the Gaussian prior and every trained
prior). With `[eval_fid]` the pipeline writes `RUN/eval/summary.json`: FID per source and each
EBM prior's prior-hole closure `(FID_gauss - FID_ebm) / (FID_gauss - FID_recon)`. It always ends by
writing `RUN/report.html` (`hebmctl report RUN`): the whole run on one self-contained page.
"""

from __future__ import annotations

import json
import tomllib
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from hebmctl.errors import HebmctlError
from hebmctl.io.atomic import write_text
from hebmctl.io.console import console
from hebmctl.io.images import save_png
from hebmctl.metrics.prior_hole import fid_summary
from hebmctl.schemas import (
    CacheLatentsConfig,
    EvalAnomalyConfig,
    EvalFidConfig,
    EvalOodConfig,
    EvalProbeConfig,
    EvalReconConfig,
    PretrainConfig,
    ReportConfig,
    SampleConfig,
    StageConfig,
    TrainPriorConfig,
)

DEMO_CONFIG = "demo.toml"
"""Built-in pipeline config (package data): the digits demo on builtin:mnist-10k."""

KNOWN_TABLES = {"run", "pretrain", "cache_latents", "train_prior", "sample", "eval_recon", "eval_probe", "eval_fid", "eval_ood", "eval_anomaly"}


@dataclass(frozen=True)
class PipelinePlan:
    pretrain: PretrainConfig
    cache_latents: CacheLatentsConfig
    priors: tuple[TrainPriorConfig, ...]
    samples: tuple[SampleConfig, ...]
    evals: tuple[tuple[str, StageConfig], ...] = ()

    def stages(self) -> list[tuple[str, StageConfig]]:
        named: list[tuple[str, StageConfig]] = [("pretrain", self.pretrain), ("cache_latents", self.cache_latents)]
        named += [(f"train_prior:{p.name}", p) for p in self.priors]
        named += [(f"sample:{s.prior}", s) for s in self.samples]
        return named + list(self.evals)


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
        evals=_eval_configs(data, run_dir, [str(p.out) for p in priors]),
    )


def _eval_configs(data: dict[str, Any], run_dir: str, prior_dirs: list[str]) -> tuple[tuple[str, StageConfig], ...]:
    """(name, config) of every evaluation the optional eval tables ask for, in run order."""
    base = {"run": run_dir}
    evals: list[tuple[str, StageConfig]] = []
    if "eval_recon" in data:
        evals.append(("eval_recon", EvalReconConfig.model_validate(base | data["eval_recon"])))
    if "eval_probe" in data:
        evals.append(("eval_probe", EvalProbeConfig.model_validate(base | data["eval_probe"])))
    per_prior = {"eval_fid": (EvalFidConfig, ["gaussian", "recon", *prior_dirs]), "eval_ood": (EvalOodConfig, ["gaussian", *prior_dirs]),
                 "eval_anomaly": (EvalAnomalyConfig, ["gaussian", *prior_dirs])}
    for table, (model, priors) in per_prior.items():
        if table in data:
            evals += [(f"{table}:{Path(p).name}", model.model_validate(base | data[table] | {"prior": p})) for p in priors]
    return tuple(evals)


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
    _run_evals(plan, force)
    _write_report(Path(plan.pretrain.run))
    console().rule(f"[bold green]pipeline complete: {plan.pretrain.run}")


def _write_report(run_dir: Path) -> None:
    """RUN/report.html: the whole run on one self-contained page (rewritten on every pipeline run)."""
    from hebmctl.stages import report

    path = report.run(ReportConfig(runs=(run_dir,)))
    console().print(f"report: open {path} in a browser")


def _run_evals(plan: PipelinePlan, force: bool) -> None:
    from hebmctl.stages import eval_anomaly, eval_fid, eval_ood, eval_probe, eval_recon
    from hebmctl.stages.eval_common import RunControl

    stages = {"eval_recon": eval_recon, "eval_probe": eval_probe, "eval_fid": eval_fid, "eval_ood": eval_ood, "eval_anomaly": eval_anomaly}
    fids: dict[str, float] = {}
    n_fid = None
    for name, config in plan.evals:
        console().rule(f"[bold]{name.replace('_', ' ', 1)}")
        manifest = stages[name.split(":")[0]].run(config, RunControl(force=force))
        if name.startswith("eval_fid:"):
            fids[name.split(":", 1)[1]] = manifest.metrics["fid"]
            n_fid = manifest.metrics["n"]
    if fids:
        summary = fid_summary(fids, n_fid)
        write_text(Path(plan.pretrain.run) / "eval" / "summary.json", json.dumps(summary, indent=2) + "\n")
        console().print(f"FID summary (N = {n_fid}): " + ", ".join(f"{k} {v:.2f}" for k, v in fids.items()))


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
