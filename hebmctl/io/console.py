"""All terminal output: a rich console and progress bars, silent on non-zero ranks."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, ProgressColumn, Task, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.text import Text

from hebmctl.runtime import is_main_process


def console() -> Console:
    """Messages go to stderr so that stdout stays free for machine-readable output (--json)."""
    return Console(stderr=True, quiet=not is_main_process())


class RateColumn(ProgressColumn):
    """Items per second, with the unit taken from the task's `unit` field."""

    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        unit = task.fields.get("unit", "it")
        return Text(f"{speed:8.1f} {unit}/s" if speed else f"{'?':>8} {unit}/s")


def progress_bar() -> Progress:
    """Progress with rate, ETA and a free-text `info` field for live losses."""
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        RateColumn(),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        TextColumn("{task.fields[info]}"),
        console=console(),
        disable=not is_main_process(),
        transient=False,
    )


def append_jsonl(path: Path, record: dict[str, Any]) -> None:
    """Append one JSON line (metrics logs). Only rank 0 writes."""
    if not is_main_process():
        return
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(json.dumps(record) + "\n")


def truncate_jsonl(path: Path, max_step: int) -> None:
    """Drop log lines past `max_step` (written after the checkpoint a run resumes from). Only rank 0 writes."""
    path = Path(path)
    if not is_main_process() or not path.is_file():
        return
    kept = [line for line in path.read_text().splitlines() if line.strip() and json.loads(line).get("step", 0) <= max_step]
    path.write_text("".join(line + "\n" for line in kept))
