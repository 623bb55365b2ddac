"""`hebmctl inspect`: validate an artifact folder and show its manifest."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from rich.table import Table

from hebmctl.io.console import console
from hebmctl.io.manifest import MANIFEST_NAME, read_any_manifest, verify_outputs
from hebmctl.schemas import ManifestBase


@dataclass(frozen=True)
class InspectReport:
    folder: Path
    manifest: ManifestBase
    manifest_sha256: str
    problems: list[str]


def run(path: Path, check_hashes: bool = True) -> InspectReport:
    folder = Path(path).parent if Path(path).name == MANIFEST_NAME else Path(path)
    manifest, sha = read_any_manifest(folder)
    return InspectReport(folder, manifest, sha, verify_outputs(folder, manifest, check_hashes=check_hashes))


def _flatten(prefix: str, value: object) -> list[tuple[str, str]]:
    if isinstance(value, dict):
        return [row for k, v in value.items() for row in _flatten(f"{prefix}.{k}" if prefix else str(k), v)]
    if isinstance(value, float):
        return [(prefix, f"{value:.6g}")]
    if isinstance(value, list) and value and all(isinstance(v, float) for v in value):
        return [(prefix, "[" + ", ".join(f"{v:.4g}" for v in value) + "]")]
    return [(prefix, str(value))]


def print_report(report: InspectReport) -> None:
    m = report.manifest
    table = Table(title=f"{m.kind} artifact: {report.folder}", show_lines=False)
    table.add_column("field", style="bold")
    table.add_column("value", overflow="fold")
    for key, value in [("status", m.status), ("created_at", m.created_at), ("hebmctl_version", m.hebmctl_version),
                       ("schema_version", str(m.schema_version)), ("fingerprint", m.fingerprint), ("manifest_sha256", report.manifest_sha256)]:
        table.add_row(key, value)
    for ref in m.inputs:
        table.add_row(f"input {ref.role}", f"{ref.path} ({ref.kind}, {ref.sha256[:16]}...)")
    for out in m.outputs:
        shapes = ", ".join(f"{k} {v.shape} {v.dtype}" for k, v in out.tensors.items())
        table.add_row(f"output {out.name}", f"{out.bytes:,} bytes" + (f"; {shapes}" if shapes and len(shapes) < 200 else ""))
    for key, value in _flatten("", m.metrics):
        table.add_row(f"metric {key}", value)
    for key, value in _flatten("", m.config.model_dump(mode="json")):  # type: ignore[attr-defined]
        table.add_row(f"config {key}", value)
    out = console()
    out.print(table)
    if report.problems:
        out.print("[bold red]problems:[/bold red] " + "; ".join(report.problems))
    else:
        out.print("[green]all output files present and matching the manifest[/green]")
