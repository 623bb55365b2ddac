"""What every `hebmctl eval` stage does the same way: inputs, the up-to-date check, result files, tables.

An evaluation folder holds `result.json` (the numbers), plots, and the manifest (written last),
whose `metrics` equal the result and whose `inputs` name what was evaluated.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from rich.table import Table

from hebmctl.data import ImageSet, load_split
from hebmctl.io.atomic import write_text
from hebmctl.io.console import console
from hebmctl.io.manifest import common_fields, describe_file, prepare_output, read_manifest, stage_fingerprint, write_manifest
from hebmctl.schemas.common import InputRef, ManifestBase, StageConfig
from hebmctl.schemas.pretrain import BackboneManifest

RESULT_NAME = "result.json"
M = TypeVar("M", bound=ManifestBase)


@dataclass(frozen=True)
class RunControl:
    force: bool = False


def backbone_manifest(folder: Path) -> BackboneManifest:
    """The backbone's manifest (its data spec and excluded classes), without loading weights."""
    return read_manifest(folder, BackboneManifest)[0]


def load_data(role: str, spec: str, split: str, limit: int | None = None) -> tuple[ImageSet, InputRef]:
    """One split of a data set and its lineage entry (content fingerprint)."""
    images = load_split(spec, split, limit=limit)
    return images, InputRef(role=role, path=spec, kind="data", sha256=images.fingerprint(), subset=images.subset)


def up_to_date(config: StageConfig, inputs: list[InputRef], manifest_type: type[M], force: bool, name: str,
               input_problems: Callable[[M], list[str]] | None = None) -> tuple[str, M | None]:
    """(fingerprint, the existing manifest if the evaluation is complete, up to date and intact, else None);
    `input_problems` checks the inputs recorded only after the fingerprint (`hebmctl.io.manifest.prepare_output`)."""
    fingerprint = stage_fingerprint(config, inputs)
    existing = prepare_output(config.out, manifest_type, fingerprint, force, input_problems)
    if existing is not None:
        console().print(f"[green]eval {name}: {config.out} is up to date[/green]")
    return fingerprint, existing


def finish(config: StageConfig, manifest_type: type[M], fingerprint: str, inputs: list[InputRef], result: dict[str, Any], files: Sequence[str]) -> M:
    """Write result.json, then the manifest (the commit marker) listing it and `files`."""
    write_text(config.out / RESULT_NAME, json.dumps(result, indent=2) + "\n")
    outputs = [describe_file(config.out, name) for name in (RESULT_NAME, *files)]
    manifest = manifest_type(**common_fields(fingerprint), config=config, inputs=inputs, outputs=outputs, metrics=result)
    write_manifest(config.out, manifest)
    return manifest


def print_table(title: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """A rich table on stderr (stdout stays free for --json)."""
    table = Table(title=title)
    for column in columns:
        table.add_column(column, justify="left" if column == columns[0] else "right")
    for row in rows:
        table.add_row(*[f"{v:.4f}" if isinstance(v, float) else str(v) for v in row])
    console().print(table)
