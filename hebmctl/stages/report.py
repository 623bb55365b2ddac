"""`hebmctl report`: one self-contained HTML page per run, or several runs side by side.

The page is rendered from Jinja2 templates (package data, `hebmctl/templates/`) with every image
inlined as a data URI, training curves drawn as inline SVG from `metrics.jsonl`, and no script:
it reads the same with JavaScript off, offline, sent by mail. Everything comes from the run
folder's manifests and the files they list (`hebmctl.io.run_scan`); no other stage is imported.
A file whose size or sha256 differs from its manifest is never shown as if it were fine: its
artifact is marked damaged and the file's place on the page says what is wrong.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import math
import os
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jinja2

from hebmctl import __version__
from hebmctl.io.atomic import write_text
from hebmctl.io.charts import Chart, Graph, graph_layout, line_chart
from hebmctl.io.console import console
from hebmctl.io.run_scan import Artifact, Lineage, build_lineage, expected_but_absent, rank, scan_run
from hebmctl.metrics.prior_hole import NAMED_SOURCES, fid_summary
from hebmctl.schemas.report import ReportConfig

IMAGE_TYPES = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".svg": "image/svg+xml"}
CURVES = {
    "backbone": [("loss", ("loss",)), ("KL per layer (nats)", ("kl_per_layer",)), ("reconstruction MSE", ("mse",))],
    "prior": [("loss", ("loss",)), ("energy gap: mean F(pos) - mean F(neg)", ("energy_gap",)), ("negative energy F", ("neg_energy_pos", "neg_energy_neg"))],
}
"""Charts drawn from an artifact's metrics.jsonl: (title, logged keys); a list-valued key gives one line per layer."""
TIME_KEYS = ("train_wall_s", "eval_wall_s", "wall_s", "generate_s", "feature_s")
"""Metrics that are seconds spent (summed, at any depth, into the stage's time)."""
MACHINE_KEYS = ("device", "peak_rss_mb", "peak_cuda_mb", "steps_per_s", "images_per_s", "feature_s_per_1000")


def run(config: ReportConfig) -> Path:
    """Read every run, render the page (one run: its report; several: the comparison), write it atomically."""
    t0 = time.perf_counter()
    views = [read_run(Path(r), config) for r in config.runs]
    if len({v.name for v in views}) < len(views):  # two runs named alike: tell them apart by their paths
        for view in views:
            view.name = str(view.path)
    page = "report.html.j2" if len(views) == 1 else "compare.html.j2"
    context = {"runs": views, "about": _about()} | ({"compare": compare(views, config.max_curve_points)} if len(views) > 1 else {})
    write_text(config.out, environment().get_template(page).render(**context))
    size = config.out.stat().st_size
    console().print(f"[green]report: done[/green] {config.out} ({size / 1024:,.0f} KiB, {time.perf_counter() - t0:.1f} s)")
    return config.out


def environment() -> jinja2.Environment:
    """The template environment: package templates, HTML autoescaping, errors on undefined names."""
    env = jinja2.Environment(loader=jinja2.PackageLoader("hebmctl", "templates"), autoescape=True,
                             undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    env.filters["fmt"] = fmt
    env.globals |= {"flatten": flatten, "metric_tables": metric_tables, "config_of": config_of}
    return env


def _about() -> dict[str, str]:
    """Who wrote the page, where and when (the machine that ran each stage is in the stage's metrics)."""
    return {"version": __version__, "written_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "host": f"{platform.node()} ({platform.system()} {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()})"}


# ---- values ------------------------------------------------------------------------------------


def fmt(value: Any) -> str:
    """One table cell: floats to 6 significant digits, lists inline, None as a dash."""
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:.6g}" if math.isfinite(value) else str(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(fmt(v) for v in value) + "]"
    return str(value)


def config_of(artifact: Artifact) -> dict[str, Any]:
    """The resolved stage config a manifest records, as JSON data ({} for kinds without one, e.g. fid-stats)."""
    config = getattr(artifact.manifest, "config", None)
    return config.model_dump(mode="json") if config is not None else {}


def flatten(value: Any, prefix: str = "") -> list[tuple[str, Any]]:
    """Nested dicts (and lists of dicts) as (dotted key, leaf value) rows."""
    if isinstance(value, dict) and (value or not prefix):  # an empty dict at the top has no rows
        return [row for k, v in value.items() for row in flatten(v, f"{prefix}.{k}" if prefix else str(k))]
    if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
        return [row for i, v in enumerate(value) for row in flatten(v, f"{prefix}[{i}]")]
    return [(prefix, value)]


@dataclass(frozen=True)
class Matrix:
    """A dict of dicts as a table: e.g. OOD scores (rows) x AUROC, AUPRC, ... (columns)."""

    title: str
    columns: list[str]
    rows: list[tuple[str, list[Any]]]


def metric_tables(metrics: dict[str, Any]) -> tuple[list[Matrix], list[tuple[str, Any]]]:
    """Metrics as (matrices for dicts of flat dicts, key/value rows for everything else)."""
    matrices, rest = [], {}
    for key, value in metrics.items():
        if _is_matrix(value):
            columns = list(dict.fromkeys(c for inner in value.values() for c in inner))
            matrices.append(Matrix(key, columns, [(name, [inner.get(c) for c in columns]) for name, inner in value.items()]))
        else:
            rest[key] = value
    return matrices, flatten(rest)


def _is_matrix(value: Any) -> bool:
    return (isinstance(value, dict) and len(value) > 1 and all(isinstance(v, dict) and v for v in value.values())
            and all(not isinstance(x, (dict, list)) for v in value.values() for x in v.values()))


# ---- one run -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Image:
    """An image of the page: inlined as a data URI, or the reason it is not shown."""

    artifact: str
    name: str
    uri: str | None
    problem: str | None


@dataclass
class RunView:
    """Everything the page shows about one run folder."""

    name: str
    path: Path
    artifacts: list[Artifact]
    lineage: Lineage
    graph: Graph
    absent: list[str]
    curves: dict[str, list[Chart]] = field(default_factory=dict)
    images: dict[str, list[Image]] = field(default_factory=dict)
    fids: list[dict[str, Any]] = field(default_factory=list)
    closure: list[dict[str, Any]] = field(default_factory=list)
    timing: list[dict[str, Any]] = field(default_factory=list)

    def by_status(self, status: str) -> list[Artifact]:
        return [a for a in self.artifacts if a.status == status]

    @property
    def evaluations(self) -> list[Artifact]:
        return [a for a in self.artifacts if a.kind.startswith("eval-")]

    @property
    def devices(self) -> list[str]:
        return sorted({str(r["machine"]["device"]) for r in self.timing if "device" in r["machine"]})

    @property
    def missing_parents(self) -> list:
        return [n for n in self.lineage.nodes if n.status == "missing"]


def read_run(path: Path, config: ReportConfig) -> RunView:
    """Scan and check a run folder and prepare its figures and tables."""
    artifacts = scan_run(path, config.check_hashes)
    lineage = build_lineage(artifacts)
    graph = graph_layout(lineage.nodes, lineage.edges, lambda node: rank(node.kind))
    view = RunView(path.name or str(path), path, artifacts, lineage, graph, expected_but_absent(artifacts))
    for artifact in artifacts:
        view.curves[artifact.name] = training_curves(artifact, config.max_curve_points)
        view.images[artifact.name] = images_of(artifact)
    view.fids = fid_rows(artifacts)
    view.closure = closure_rows(view.fids)
    view.timing = [timing_row(a) for a in artifacts if a.manifest is not None]
    return view


def images_of(artifact: Artifact) -> list[Image]:
    """Every image file the manifest lists (single sample images excepted), inlined if intact."""
    if artifact.manifest is None:
        return []
    names = [o.name for o in artifact.manifest.outputs if Path(o.name).suffix.lower() in IMAGE_TYPES and not o.name.startswith("images/")]
    return [_image(artifact, name) for name in names]


def _image(artifact: Artifact, name: str) -> Image:
    problem = artifact.file_problem(name)
    if problem is not None:
        return Image(artifact.name, name, None, problem)
    data = (artifact.folder / name).read_bytes()
    uri = f"data:{IMAGE_TYPES[Path(name).suffix.lower()]};base64,{base64.b64encode(data).decode('ascii')}"
    return Image(artifact.name, name, uri, None)


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """The records of a metrics.jsonl file (lines that do not parse are skipped)."""
    records = []
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict):
            records.append(record)
    return records


def training_curves(artifact: Artifact, max_points: int) -> list[Chart]:
    """The charts of CURVES for an intact metrics.jsonl, rollbacks marked; [] when there is none to trust."""
    if artifact.kind not in CURVES or artifact.file_problem("metrics.jsonl") or not (artifact.folder / "metrics.jsonl").is_file():
        return []
    records = read_jsonl(artifact.folder / "metrics.jsonl")
    markers = [(r["diverged_at_step"], f"rollback to {r.get('resumed_from_step')}") for r in artifact.manifest.metrics.get("rollbacks", []) or []]
    charts = [line_chart(title, curve_series(records, keys), markers=markers, max_points=max_points) for title, keys in CURVES[artifact.kind]]
    return [c for c in charts if c is not None]


def curve_series(records: list[dict[str, Any]], keys: tuple[str, ...]) -> dict[str, tuple[list[float], list[float]]]:
    """label -> (steps, values) for the logged keys; a list-valued key gives one series per entry (z1, z2, ...)."""
    series: dict[str, tuple[list[float], list[float]]] = {}
    for key in keys:
        for r in (r for r in records if key in r and "step" in r):
            values = r[key] if isinstance(r[key], list) else [r[key]]
            for i, v in enumerate(values):
                label = f"z{i + 1}" if isinstance(r[key], list) else key
                xs, ys = series.setdefault(label, ([], []))
                xs.append(r["step"])
                ys.append(v)
    return series


def fid_rows(artifacts: list[Artifact]) -> list[dict[str, Any]]:
    """One row per FID evaluation: prior name, N, FID, reference, status; sorted by N, then prior."""
    rows = []
    for a in artifacts:
        if a.kind == "eval-fid":
            m = a.manifest.metrics
            rows.append({"prior": str(m.get("source", "?")).removeprefix("prior:"), "n": m.get("n"), "fid": m.get("fid"), "ref": m.get("ref"),
                         "split": m.get("split"), "ref_n": m.get("ref_n"), "artifact": a.name, "status": a.status})
    return sorted(rows, key=lambda r: (r["n"] or 0, r["prior"] not in NAMED_SOURCES, r["prior"]))


def closure_rows(fids: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Prior-hole closure (FID_gauss - FID_ebm) / (FID_gauss - FID_recon) for every EBM prior, per (N, reference)."""
    groups: dict[tuple, dict[str, float]] = {}
    for row in fids:
        groups.setdefault((row["n"], row["ref"], row["split"], row["ref_n"]), {})[row["prior"]] = row["fid"]
    rows = []
    for (n, ref, split, _), by_prior in groups.items():
        if not all(k in by_prior for k in NAMED_SOURCES) or len(by_prior) < 3:
            continue
        summary = fid_summary(by_prior, n)
        rows += [{"prior": p, "n": n, "ref": f"{ref} [{split}]", "fid": by_prior[p], "fid_gaussian": by_prior["gaussian"], "fid_recon": by_prior["recon"],
                  "closure": c, "ratio": summary["fid_ratio_to_gaussian"][p]} for p, c in summary["prior_hole_closure"].items()]
    return rows


def timing_row(artifact: Artifact) -> dict[str, Any]:
    """Where and how long a stage ran, from what its manifest recorded."""
    m = artifact.manifest
    times = [(k, v) for k, v in flatten(m.metrics) if k.split(".")[-1] in TIME_KEYS and isinstance(v, (int, float))]
    machine = {k: v for k, v in flatten(m.metrics) if k.split(".")[-1] in MACHINE_KEYS and v is not None}
    return {"artifact": artifact.name, "kind": m.kind, "created_at": m.created_at, "version": m.hebmctl_version,
            "seconds": sum(v for _, v in times) if times else None, "times": times, "machine": machine}


# ---- several runs ------------------------------------------------------------------------------


def normalised_config(artifact: Artifact) -> dict[str, str]:
    """The artifact's config as displayed cells, with its run folder written as RUN so that runs compare."""
    config = config_of(artifact)
    run = str(config.get("run", "")).rstrip("/")
    cells = {}
    for key, value in flatten(config):
        text = fmt(value)
        if run and (text == run or text.startswith(run + "/")):
            text = "RUN" + text[len(run):]
        cells[key] = text
    return cells


@dataclass(frozen=True)
class Aligned:
    """One table of the comparison: rows (label, one cell per run, whether the cells differ)."""

    title: str
    rows: list[tuple[str, list[str], bool]]

    @property
    def n_differ(self) -> int:
        return sum(1 for _, _, differs in self.rows if differs)


def align(title: str, per_run: list[dict[str, str]]) -> Aligned:
    """Union of the runs' keys in first-seen order; a missing key shows as a dash and counts as a difference."""
    keys = list(dict.fromkeys(k for cells in per_run for k in cells))
    rows = [(k, [cells.get(k, "—") for cells in per_run], len({cells.get(k) for cells in per_run}) > 1) for k in keys]
    return Aligned(title, rows)


def compare(views: list[RunView], max_points: int = 400) -> dict[str, Any]:
    """The comparison's tables and pairs: configs, metrics, FIDs and closure by (prior, N), times, curves, grids."""
    names = _artifact_names(views)
    found = [{a.name: a for a in v.artifacts if a.manifest is not None} for v in views]
    return {
        "configs": [align(n, [normalised_config(f[n]) if n in f else {} for f in found]) for n in names],
        "metrics": [align(n, [{k: fmt(v) for k, v in flatten(f[n].manifest.metrics)} if n in f else {} for f in found]) for n in names],
        "fids": align("FID", [{f"{r['prior']} @ N = {r['n']}": fmt(r["fid"]) for r in v.fids} for v in views]),
        "closure": align("prior-hole closure", [{f"{r['prior']} @ N = {r['n']}": fmt(r["closure"]) for r in v.closure} for v in views]),
        "timing": align("seconds", [{r["artifact"]: fmt(r["seconds"]) for r in v.timing} for v in views]),
        "curves": compare_curves(views, names, max_points),
        "grids": [(n, img, [_image_in(v, n, img) for v in views]) for n in names for img in _image_names(views, n)],
    }


def _artifact_names(views: list[RunView]) -> list[str]:
    ranked = {(rank(a.kind), a.name) for v in views for a in v.artifacts if not a.external}
    return [name for _, name in sorted(ranked)]


def _image_names(views: list[RunView], artifact: str) -> list[str]:
    return list(dict.fromkeys(img.name for v in views for img in v.images.get(artifact, [])))


def _image_in(view: RunView, artifact: str, name: str) -> Image | None:
    return next((img for img in view.images.get(artifact, []) if img.name == name), None)


def compare_curves(views: list[RunView], names: list[str], max_points: int) -> list[tuple[str, Chart]]:
    """Each training chart with one line per run and series (e.g. 'run-a z1'), for every artifact that has curves."""
    out = []
    for name in names:
        artifacts = [next((a for a in v.artifacts if a.name == name and a.manifest is not None), None) for v in views]
        kind = next((a.kind for a in artifacts if a is not None), None)
        for title, keys in CURVES.get(kind, []):
            series = {}
            for view, artifact in zip(views, artifacts):
                if artifact is not None and not artifact.file_problem("metrics.jsonl") and (artifact.folder / "metrics.jsonl").is_file():
                    records = read_jsonl(artifact.folder / "metrics.jsonl")
                    series |= {f"{view.name} {label}": xy for label, xy in curve_series(records, keys).items()}
            chart = line_chart(title, series, max_points=max_points)
            if chart is not None:
                out.append((name, chart))
    return out
