"""The `hebmctl` command line: parses options into a stage config and calls the stage. Nothing else."""

from __future__ import annotations

import errno
import functools
import importlib
import inspect
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import typer
from pydantic import BaseModel, ValidationError
from rich.markup import escape

from hebmctl import __version__
from hebmctl.cli_options import build_config, config_parameters, describe_validation_error, read_config_file
from hebmctl.errors import ConfigError, HebmctlError
from hebmctl.io.console import console
from hebmctl.schemas import CONFIG_TYPES
from hebmctl.schemas.eval import (
    EvalAnomalyConfig,
    EvalDisentanglementConfig,
    EvalFidConfig,
    EvalOodConfig,
    EvalProbeConfig,
    EvalReconConfig,
)
from hebmctl.schemas.latents import CacheLatentsConfig
from hebmctl.schemas.pretrain import PretrainConfig
from hebmctl.schemas.prior import TrainPriorConfig
from hebmctl.schemas.report import ReportConfig
from hebmctl.schemas.sample import SampleConfig

app = typer.Typer(
    name="hebmctl",
    help="Energy-based priors on hierarchical VAE latents: pretrain -> cache-latents -> train-prior -> sample -> eval.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"hebmctl {__version__}")
        raise typer.Exit()


@app.callback()
def main(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version and exit.")) -> None:
    """Energy-based priors on hierarchical VAE latents."""


def fail(message: str) -> None:
    console().print(f"[bold red]error:[/bold red] {escape(message)}", highlight=False)
    raise typer.Exit(code=2)


RESUMABLE = {"pretrain", "cache-latents", "train-prior", "pipeline"}
"""Commands that continue where they stopped when re-run (the others start their output again)."""
TABLE_OF_MODEL = {model.__name__: table for table, model in CONFIG_TYPES.items()}


def guarded(func: Callable[..., Any], model: type[BaseModel] | None = None, name: str | None = None) -> Callable[..., Any]:
    """Turn user errors (bad input, bad config, an unwritable folder) into a one-paragraph message and exit
    code 2; Ctrl-C into exit code 130 with what to do next."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except HebmctlError as exc:
            fail(str(exc))
        except ValidationError as exc:
            from_file = model is None  # the pipeline: settings come from its TOML tables
            table = TABLE_OF_MODEL.get(exc.title) if from_file else None
            fail(describe_validation_error(exc, model or CONFIG_TYPES.get(table or ""), table))
        except OSError as exc:
            if exc.errno not in (errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.ENOTDIR):
                raise
            fail(f"Cannot write {exc.filename or 'a file'}: {exc.strerror}. Make the folder writable (or free space), or write "
                 "somewhere else with --run / --out, then re-run the same command.")
        except KeyboardInterrupt:
            command = name or func.__name__
            hint = ("Everything up to the last checkpoint is kept: re-run the same command to resume."
                    if command in RESUMABLE else "Nothing was committed: re-run the same command to run it again.")
            console().print(f"[yellow]interrupted:[/yellow] {hint}", highlight=False)
            raise typer.Exit(code=130) from None

    return wrapper


CONTROL_PARAMS = [
    inspect.Parameter("config_file", inspect.Parameter.KEYWORD_ONLY, annotation=Path | None,
                      default=typer.Option(None, "--config", help=escape("TOML file with settings: a [stage] table (e.g. [pretrain], "
                                                                         "[eval_ood]) or top-level keys; options given here override "
                                                                         "it."))),
    inspect.Parameter("force", inspect.Parameter.KEYWORD_ONLY, annotation=bool,
                      default=typer.Option(False, "--force", metavar="", help="Replace an existing artifact: the new run starts over (a "
                                                                              "partial run with the same settings is resumed) and the old "
                                                                              "artifact stays in place until the new one is complete.")),
    inspect.Parameter("dry_run", inspect.Parameter.KEYWORD_ONLY, annotation=bool,
                      default=typer.Option(False, "--dry-run", metavar="", help="Check the settings and the data's sizes, print the "
                                                                                "resolved config as JSON and exit.")),
]


eval_app = typer.Typer(
    name="eval",
    help="Evaluate backbones and priors: fid, recon, ood, anomaly, probe, disentanglement. Each writes RUN/eval/<name>/ (result.json, "
        "plots, manifest).",
    no_args_is_help=True,
)
app.add_typer(eval_app, name="eval")


def stage_command(name: str, model: type[BaseModel], section: str, help_text: str, extra: list[inspect.Parameter] = (),
                  target: typer.Typer = app,
                  preflight: Callable[[BaseModel], Any] | None = None) -> Callable:
    """Register a command on `target` whose options are `model`'s fields plus --config/--force/--dry-run (+ extra).

    `preflight(config)` (optional) checks the inputs without computing; --dry-run runs it too.
    """

    def decorator(runner: Callable[..., None]) -> Callable:
        field_names = set(model.model_fields)

        def command(**kwargs: Any) -> None:
            control = {k: kwargs.pop(k) for k in list(kwargs) if k not in field_names}
            config = build_config(model, read_config_file(control.pop("config_file"), section), kwargs)
            if control.pop("dry_run"):
                if preflight is not None:
                    preflight(config)
                typer.echo(config.model_dump_json(indent=2))
                return
            runner(config, **control)

        command.__signature__ = inspect.Signature(config_parameters(model) + CONTROL_PARAMS + list(extra))
        command.__doc__ = help_text
        target.command(name, help=help_text)(guarded(command, model, name))
        return runner

    return decorator


STOP_AFTER = inspect.Parameter("stop_after", inspect.Parameter.KEYWORD_ONLY, annotation=int | None,
                               default=typer.Option(None, "--stop-after", min=1, help="Stop (checkpointed) once this many steps are done "
                                                                                      "in total; re-run without it to continue."))


def _check_pretrain_inputs(config: PretrainConfig) -> None:
    from hebmctl.stages import pretrain

    pretrain.check_inputs(config)


@stage_command("pretrain", PretrainConfig, "pretrain", "Train the hierarchical VAE backbone, with --prior joint together with an EBM "
                                                     "prior (resumes when re-run).", [STOP_AFTER],
               preflight=_check_pretrain_inputs)
def _pretrain(config: PretrainConfig, force: bool, stop_after: int | None) -> None:
    from hebmctl.stages import pretrain

    pretrain.run(config, pretrain.RunControl(force=force, stop_after=stop_after))


@stage_command("cache-latents", CacheLatentsConfig, "cache_latents", "Infer posterior latents u0 for each split into HDF5 (resumes when "
                                                                     "re-run).")
def _cache_latents(config: CacheLatentsConfig, force: bool) -> None:
    from hebmctl.stages import cache_latents

    cache_latents.run(config, cache_latents.RunControl(force=force))


@stage_command("train-prior", TrainPriorConfig, "train_prior", "Learn an EBM prior in u-space on the cached latents: --scheme "
                                                               "joint|diffusion|cooperative (resumes when re-run).", [STOP_AFTER])
def _train_prior(config: TrainPriorConfig, force: bool, stop_after: int | None) -> None:
    from hebmctl.stages import train_prior

    train_prior.run(config, train_prior.RunControl(force=force, stop_after=stop_after))


@stage_command("sample", SampleConfig, "sample", "Generate images with the Gaussian prior or a trained EBM prior.")
def _sample(config: SampleConfig, force: bool) -> None:
    from hebmctl.stages import sample

    sample.run(config, sample.RunControl(force=force))


def _train_prior_sweep(runs: list[Path], seeds: str | None, config_file: Path | None, force: bool, dry_run: bool, **options: Any) -> None:
    from hebmctl.stages import train_prior_sweep

    seed_list = [int(s) for s in seeds.split(",")] if seeds else [None] * len(runs)
    if len(seed_list) != len(runs):
        raise ConfigError(f"--seeds gives {len(seed_list)} seeds for {len(runs)} runs; give one per run (or none: every run uses --seed).")
    file_values = read_config_file(config_file, "train_prior")
    # Each prior's config is exactly the one `hebmctl train-prior --run RUN --seed SEED <options>` builds (same fingerprint).
    configs = [build_config(TrainPriorConfig, file_values, options | {"run": run, "seed": seed}) for run, seed in zip(runs, seed_list)]
    if dry_run:
        typer.echo(json.dumps([json.loads(c.model_dump_json()) for c in configs], indent=2))
        return
    for config, manifest in zip(configs, train_prior_sweep.run(configs, force=force), strict=True):
        console().print(f"train-prior-sweep: {config.out} (final energy gap {manifest.metrics['final_energy_gap']:+.4f})")


_SWEEP_RUNS = inspect.Parameter("runs", inspect.Parameter.KEYWORD_ONLY, annotation=list[Path],
                                default=typer.Argument(..., metavar="RUN", help="Run folders, one prior each (RUN/backbone, RUN/latents "
                                                                                "-> RUN/priors/NAME unless paths are given).",
                                                       show_default=False))
_SWEEP_SEEDS = inspect.Parameter("seeds", inspect.Parameter.KEYWORD_ONLY, annotation=str | None,
                                 default=typer.Option(None, "--seeds", help="One seed per run, comma-separated (default: --seed for "
                                                                            "every run)."))
_train_prior_sweep.__signature__ = inspect.Signature([_SWEEP_RUNS, _SWEEP_SEEDS] + CONTROL_PARAMS
                                                     + [p for p in config_parameters(TrainPriorConfig) if p.name not in ("run", "seed")]
                                                     + [inspect.Parameter("seed", inspect.Parameter.KEYWORD_ONLY, annotation=int | None,
                                                                          default=typer.Option(None, "--seed", help="Seed of every run "
                                                                                               "without --seeds (default 0)."))])
app.command("train-prior-sweep",
            help="Train one diffusion prior per run folder, all at once in one process (stacked weights, one batched Langevin step; "
                 "each prior equals train-prior's within float rounding and gets its fingerprint). Restarts when stopped.",
            no_args_is_help=True)(guarded(_train_prior_sweep, TrainPriorConfig, "train-prior-sweep"))


AS_JSON = inspect.Parameter("as_json", inspect.Parameter.KEYWORD_ONLY, annotation=bool,
                            default=typer.Option(False, "--json", metavar="", help="Print the result as one JSON object on stdout (tables "
                                                                                   "and progress go to stderr)."))


EVALUATIONS = [
    ("fid", EvalFidConfig, "FID (clean-fid, offline Inception) of a prior's samples, reconstructions or given images vs a data split."),
    ("recon", EvalReconConfig, "Reconstruction MSE (and ELBO, KL per layer, active units) of the backbone on a split."),
    ("ood", EvalOodConfig, "OOD detection with -L^{>k}, LLR^{>k} and -Lprior^{>k} (diffusion prior: Diff-EBM's DiffEBM^{>k}): "
     "AUROC, AUPRC, FPR@80%TPR, histograms, ROC curves."),
    ("anomaly", EvalAnomalyConfig, "Held-out-class anomaly detection (scores -Lprior^{>0} and -L^{>0}): AUPRC and PR curve. "
     "Scores the test part of the backbone's data: the anchors' protocol for a backbone trained on pooled:heldout=D,seed=S:mnist:DIR, "
     "else the set's test split."),
    ("probe", EvalProbeConfig, "Per-layer latent probes: test accuracy of a 2-layer MLP on posterior-mean codes."),
    ("disentanglement", EvalDisentanglementConfig, "MIG and MIG-sup per latent layer and overall, and which layer holds which factor "
        "(data with known factors, e.g. builtin:shapes)."),
]
"""`hebmctl eval NAME`: config model and help; the stage is the module hebmctl.stages.eval_NAME."""


def _register_evaluation(name: str, model: type[BaseModel], help_text: str) -> None:
    @stage_command(name, model, f"eval_{name}", help_text, [AS_JSON], eval_app)
    def _evaluate(config: BaseModel, force: bool, as_json: bool) -> None:
        from hebmctl.stages import eval_common

        stage = importlib.import_module(f"hebmctl.stages.eval_{name}")
        manifest = stage.run(config, eval_common.RunControl(force=force))
        if as_json:
            typer.echo(json.dumps(manifest.metrics))


for _name, _model, _help in EVALUATIONS:
    _register_evaluation(_name, _model, _help)


@app.command("pipeline")
@functools.partial(guarded, name="pipeline")
def pipeline(
    config_file: Path | None = typer.Option(None, "--config", help="Pipeline TOML: top-level `run = DIR` and one table per stage. Default: "
                                                                   "the built-in digits demo."),
    run: Path | None = typer.Option(None, "--run", help="Run folder (overrides the file's `run`)."),
    force: bool = typer.Option(False, "--force", metavar="", help="Re-run every stage, even those already complete (each old artifact "
                                                                  "stays until its replacement is complete)."),
    dry_run: bool = typer.Option(False, "--dry-run", metavar="", help="Check the settings and the data's sizes, print the resolved stage "
                                                                      "configs as JSON and exit."),
) -> None:
    """Run every stage in order, skipping those already complete and up to date."""
    from hebmctl.stages import pipeline as pipeline_stage
    from hebmctl.stages import pretrain

    plan = pipeline_stage.load_plan(config_file, run)
    if dry_run:
        pretrain.check_inputs(plan.pretrain)
        typer.echo(json.dumps({name: json.loads(cfg.model_dump_json()) for name, cfg in plan.stages()}, indent=2))
        return
    pipeline_stage.run(plan, force=force)


@app.command("inspect")
@functools.partial(guarded, name="inspect")
def inspect_artifact(
    path: Path = typer.Argument(..., help="An artifact folder (or its manifest.json)."),
    as_json: bool = typer.Option(False, "--json", metavar="", help="Print the manifest as JSON on stdout instead of a table."),
    no_hashes: bool = typer.Option(False, "--no-hashes", metavar="", help="Check file sizes only, not sha256 (faster on big caches)."),
) -> None:
    """Validate an artifact folder (manifest schema, files, hashes) and print its manifest."""
    from hebmctl.stages import inspect as inspect_stage

    report = inspect_stage.run(path, check_hashes=not no_hashes)
    if as_json:
        typer.echo(report.manifest.model_dump_json(indent=2))
    else:
        inspect_stage.print_report(report)
    if report.problems:
        raise typer.Exit(code=1)


def _report(**options: Any) -> None:
    from hebmctl.stages import report

    report.run(build_config(ReportConfig, {}, options))


_RUNS = inspect.Parameter("runs", inspect.Parameter.KEYWORD_ONLY, annotation=list[Path],
                          default=typer.Argument(..., metavar="RUN", help=ReportConfig.model_fields["runs"].description,
                                                 show_default=False))
_report.__signature__ = inspect.Signature([_RUNS] + [p for p in config_parameters(ReportConfig) if p.name != "runs"])
app.command("report",
            help="One self-contained HTML page of a run (lineage, configs, curves, grids, evaluations), or several runs side by side.",
            no_args_is_help=True)(guarded(_report))
"""`hebmctl report RUN [RUN ...]`: the run folders are positional, so the options are the config's other fields."""


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
