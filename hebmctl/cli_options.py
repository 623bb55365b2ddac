"""Build Typer command signatures from a stage's pydantic config.

Every config field becomes a `--kebab-case` option whose help is the field's description (one
source of truth for docs and CLI). Options default to None, meaning "not given": only given
options reach the config, whose own defaults fill the rest; `--config FILE` (a TOML file with
one table per stage, or a flat table) supplies values between the two.
"""

from __future__ import annotations

import difflib
import inspect
import math
import tomllib
import types
import typing
from pathlib import Path
from typing import Any, Literal

import typer
from pydantic import BaseModel, ValidationError
from pydantic.fields import FieldInfo
from rich.markup import escape

from hebmctl.errors import HebmctlError
from hebmctl.schemas import CONFIG_TYPES

KNOWN_TABLES = tuple(CONFIG_TYPES)
"""Tables a --config file may hold: one per stage (`hebmctl pipeline` reads them all)."""


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


def option_name(field: str, model: type[BaseModel] | None = None) -> str:
    """The command-line flag of a config field: `langevin_steps` -> `--langevin-steps`, or the model's `cli_flags`
    entry (a flag that is not a Python name, e.g. `classes` -> `--class`)."""
    flags = getattr(model, "cli_flags", {}) if model is not None else {}
    return flags.get(field) or "--" + field.replace("_", "-")


def _default_text(field: FieldInfo) -> str:
    """The help's default note: the value, "(required)", or nothing when the description already says
    what an unset (None) value means ("default: RUN/backbone")."""
    if field.is_required():
        return " (required)"
    default = field.default
    if default is None:
        return "" if "default" in (field.description or "").lower() else " (default: none)"
    if isinstance(default, bool):
        return f" (default: {'on' if default else 'off'})"
    if isinstance(default, tuple):
        return f" (default: {','.join(str(v) for v in default) or 'none'})"
    return f" (default: {default})"


def config_parameters(model: type[BaseModel]) -> list[inspect.Parameter]:
    """One keyword-only Typer option per config field (help text escaped: it is not Rich markup)."""
    params = []
    repeated = getattr(model, "repeated_options", frozenset())
    for name, field in model.model_fields.items():
        typ, extra = _option_type(field.annotation)
        typ = list[str] if name in repeated else typ  # given several times: one value each (e.g. --class A --class B)
        flag = option_name(name, model)
        decls = [f"{flag}/--no-{flag[2:]}"] if typ is bool else [flag]
        help_text = escape(f"{field.description}{extra}{_default_text(field)}")
        metavar = "" if typ is bool else ("<str>" if name in repeated else None)
        option = typer.Option(None, *decls, help=help_text, show_default=False, metavar=metavar)
        params.append(inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=option, annotation=typ | None))
    return params


def read_config_file(path: Path | None, section: str) -> dict[str, Any]:
    """The `[section]` table of a TOML file (or its top-level keys if it has no such table).

    A table no stage reads (a typo such as `[pretrian]`) is an error, not silently ignored.
    """
    if path is None:
        return {}
    try:
        data = tomllib.loads(Path(path).read_text())
    except FileNotFoundError as exc:
        raise HebmctlError(f"Config file {path} does not exist.") from exc
    except tomllib.TOMLDecodeError as exc:
        raise HebmctlError(f"Config file {path} is not valid TOML ({exc}).") from exc
    tables = {k for k, v in data.items() if isinstance(v, dict) or (isinstance(v, list) and v and all(isinstance(t, dict) for t in v))}
    unknown = sorted(tables - set(KNOWN_TABLES))
    if unknown:
        guesses = [g for u in unknown for g in difflib.get_close_matches(u, KNOWN_TABLES, n=1)]
        hint = f" (did you mean [{'], ['.join(guesses)}]?)" if guesses else ""
        raise HebmctlError(
            f"Config file {path} has the table [{'], ['.join(unknown)}], which no stage reads{hint}. Known tables: "
            f"[{'], ['.join(KNOWN_TABLES)}]; this command reads [{section}] (or, if there is none, the top-level keys)."
        )
    table = data.get(section)
    if isinstance(table, list):
        if len(table) != 1:
            raise HebmctlError(f"Config file {path} has {len(table)} [[{section}]] tables; one command runs one of them. Run them "
                               "all with `hebmctl pipeline --config FILE`, or keep one table here.")
        table = table[0]
    if table is None:
        table = {k: v for k, v in data.items() if k not in tables}
    run = data.get("run")
    table = {k.replace("-", "_"): v for k, v in table.items() if not isinstance(v, dict)}
    if run is not None and "run" not in table:
        table["run"] = run
    return table


def _number_rule(field: FieldInfo) -> str:
    """"an integer >= 1", "a finite number > 0 and < 1", ... from a numeric field's type and bounds."""
    annotation = field.annotation
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        annotation = next(a for a in typing.get_args(annotation) if a is not type(None))
    kind = "an integer" if annotation is int else "a finite number"
    bounds = []
    for meta in field.metadata:
        for attr, symbol in (("gt", ">"), ("ge", ">="), ("lt", "<"), ("le", "<=")):
            value = getattr(meta, attr, None)  # pydantic keeps Field(gt=0) as annotated_types.Gt(gt=0)
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                bounds.append(f"{symbol} {value:g}" if isinstance(value, float) else f"{symbol} {value}")
    return kind + (" " + " and ".join(bounds) if bounds else "")


NUMBER_ERRORS = {"greater_than", "greater_than_equal", "less_than", "less_than_equal", "finite_number", "int_parsing",
                 "float_parsing", "int_from_float", "int_type", "float_type"}


def _shown(value: Any) -> str:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return repr(value) if isinstance(value, str) else str(value)


def describe_validation_error(exc: ValidationError, model: type[BaseModel] | None, table: str | None = None) -> str:
    """One sentence per problem, naming the command-line flag (or, with `table`, the config-file key) and the allowed values."""
    fields = model.model_fields if model is not None else {}
    problems = []
    for error in exc.errors():
        loc = error["loc"]
        name = str(loc[0]) if loc else ""
        where = (f"[{table}] {name}" if table else option_name(name, model)) if name else (f"[{table}]" if table else "the settings")
        message = error["msg"].removeprefix("Value error, ")
        shown = _shown(error["input"]) if "input" in error and not isinstance(error["input"], dict) else None
        got = f", got {shown}" if shown is not None and shown not in message else ""
        if error["type"] == "missing":
            problems.append(f"{where} is required")
        elif error["type"] == "extra_forbidden":
            guesses = difflib.get_close_matches(name, list(fields), n=1)
            hint = f" (did you mean {guesses[0] if table else option_name(guesses[0], model)}?)" if guesses else ""
            problems.append(f"{where} is not a setting of this stage{hint}")
        elif error["type"] in NUMBER_ERRORS and name in fields:
            problems.append(f"{where} must be {_number_rule(fields[name])}{got}")
        else:
            problems.append(f"{where} {message}{got}" if message[:1].islower() else f"{where}: {message}{got}")
    return "Invalid settings: " + "; ".join(problems) + ". See --help for every option and its allowed values."


def build_config(model: type[BaseModel], file_values: dict[str, Any], cli_values: dict[str, Any]) -> BaseModel:
    """Config from (file values, overridden by the options that were given on the command line)."""
    given = {k: v for k, v in cli_values.items() if v is not None}
    return model.model_validate(file_values | given)
