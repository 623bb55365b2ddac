"""Build Typer command signatures from a stage's pydantic config.

Every config field becomes a `--kebab-case` option whose help is the field's description (one
source of truth for docs and CLI). Options default to None, meaning "not given": only given
options reach the config, whose own defaults fill the rest; `--config FILE` (a TOML file with
one table per stage, or a flat table) supplies values between the two.
"""

from __future__ import annotations

import inspect
import tomllib
import types
import typing
from pathlib import Path
from typing import Any, Literal

import typer
from pydantic import BaseModel
from pydantic.fields import FieldInfo

from hebmctl.errors import HebmctlError


def _option_type(annotation: Any) -> tuple[Any, str]:
    """(Typer-friendly type, extra help) for a field annotation. Tuples and Literals become str."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in args if a is not type(None)]
        return _option_type(inner[0]) if len(inner) == 1 else (str, "")
    if origin is Literal:
        return str, " Choices: " + ", ".join(str(a) for a in args) + "."
    if origin is tuple:
        return str, ""
    if annotation in (int, float, str, bool, Path):
        return annotation, ""
    return str, ""


def _default_text(field: FieldInfo) -> str:
    default = field.default
    if isinstance(default, tuple):
        return ",".join(str(v) for v in default) or "none"
    return "none" if default is None else str(default)


def config_parameters(model: type[BaseModel]) -> list[inspect.Parameter]:
    """One keyword-only Typer option per config field."""
    params = []
    for name, field in model.model_fields.items():
        typ, extra = _option_type(field.annotation)
        flag = "--" + name.replace("_", "-")
        decls = [f"{flag}/--no-{flag[2:]}"] if typ is bool else [flag]
        help_text = f"{field.description}{extra} (default: {_default_text(field)})"
        option = typer.Option(None, *decls, help=help_text, show_default=False)
        params.append(inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=option, annotation=typ | None))
    return params


def read_config_file(path: Path | None, section: str) -> dict[str, Any]:
    """The `[section]` table of a TOML file (or its top level if it has no such table)."""
    if path is None:
        return {}
    try:
        data = tomllib.loads(Path(path).read_text())
    except FileNotFoundError as exc:
        raise HebmctlError(f"Config file {path} does not exist.") from exc
    except tomllib.TOMLDecodeError as exc:
        raise HebmctlError(f"Config file {path} is not valid TOML ({exc}).") from exc
    table = data.get(section, data)
    run = data.get("run")
    table = {k.replace("-", "_"): v for k, v in table.items() if not isinstance(v, dict)}
    if run is not None and "run" not in table:
        table["run"] = run
    return table


def build_config(model: type[BaseModel], file_values: dict[str, Any], cli_values: dict[str, Any]) -> BaseModel:
    """Config from (file values, overridden by the options that were given on the command line)."""
    given = {k: v for k, v in cli_values.items() if v is not None}
    return model.model_validate(file_values | given)
