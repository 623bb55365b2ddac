"""Geometry of the report's inline SVG figures: line charts of training curves and the lineage graph.

Pure arithmetic, no I/O and no drawing library: the functions turn numbers into coordinates, tick
labels and boxes; the report template writes them out as SVG elements. So a page needs no
JavaScript and no images for its curves, and a test can read the numbers back.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf")


@dataclass(frozen=True)
class Line:
    label: str
    color: str
    points: str  # "x,y x,y ..." in SVG coordinates
    n_points: int
    last: float  # the last value (shown in the legend)


@dataclass(frozen=True)
class Chart:
    """A line chart ready to draw: plot box, lines, ticks and vertical markers (e.g. rollbacks)."""

    title: str
    xlabel: str
    width: int
    height: int
    left: int
    top: int
    right: int
    bottom: int
    lines: list[Line]
    x_ticks: list[tuple[float, str]]
    y_ticks: list[tuple[float, str]]
    markers: list[tuple[float, str]] = field(default_factory=list)


def nice_ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    """About `count` round tick values (1, 2, 5 x 10^k steps) covering [lo, hi]."""
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return []
    if hi <= lo:
        lo, hi = lo - 0.5 * (abs(lo) or 1.0), hi + 0.5 * (abs(hi) or 1.0)
    raw = (hi - lo) / max(count, 1)
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 5, 10) if m * power >= raw)
    first = math.floor(lo / step) * step
    return [first + i * step for i in range(int(math.ceil((hi - first) / step - 1e-9)) + 1)]


def tick_label(value: float) -> str:
    """Short axis label: 1200 -> '1.2k', 0.00012 -> '0.00012', 3.0 -> '3'."""
    if value == 0:
        return "0"
    if abs(value) >= 10_000:
        return f"{value / 1000:g}k"
    return f"{value:.4g}"


def thin(xs: Sequence[float], ys: Sequence[float], max_points: int) -> tuple[list[float], list[float]]:
    """Every k-th point so that at most `max_points` remain, always keeping the last one."""
    n = len(xs)
    if n <= max_points:
        return list(xs), list(ys)
    stride = math.ceil(n / (max_points - 1))
    keep = list(range(0, n - 1, stride)) + [n - 1]
    return [xs[i] for i in keep], [ys[i] for i in keep]


def line_chart(title: str, series: dict[str, tuple[Sequence[float], Sequence[float]]], xlabel: str = "step",
               markers: Sequence[tuple[float, str]] = (), max_points: int = 400, width: int = 420, height: int = 240) -> Chart | None:
    """A chart of `series` (label -> (x, y)); non-finite points are dropped; None when nothing is left to draw."""
    clean = {k: _finite(xs, ys) for k, (xs, ys) in series.items()}
    clean = {k: thin(xs, ys, max_points) for k, (xs, ys) in clean.items() if xs}
    if not clean:
        return None
    left, top, right, bottom = 56, 26, width - 12, height - 34
    all_x = [x for xs, _ in clean.values() for x in xs] + [m for m, _ in markers]
    all_y = [y for _, ys in clean.values() for y in ys]
    x_ticks, y_ticks = nice_ticks(min(all_x), max(all_x)), nice_ticks(min(all_y), max(all_y))
    sx = _scale(x_ticks[0], x_ticks[-1], left, right)
    sy = _scale(y_ticks[0], y_ticks[-1], bottom, top)
    lines = [Line(label, PALETTE[i % len(PALETTE)], " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in zip(xs, ys)), len(xs), ys[-1])
             for i, (label, (xs, ys)) in enumerate(clean.items())]
    return Chart(title, xlabel, width, height, left, top, right, bottom, lines,
                 [(sx(t), tick_label(t)) for t in x_ticks], [(sy(t), tick_label(t)) for t in y_ticks],
                 [(sx(m), label) for m, label in markers])


def _finite(xs: Sequence[float], ys: Sequence[float]) -> tuple[list[float], list[float]]:
    pairs = [(float(x), float(y)) for x, y in zip(xs, ys) if _is_number(x) and _is_number(y)]
    return [p[0] for p in pairs], [p[1] for p in pairs]


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _scale(lo: float, hi: float, out_lo: float, out_hi: float):
    span = (hi - lo) or 1.0
    return lambda v: out_lo + (v - lo) / span * (out_hi - out_lo)


# ---- lineage graph ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Box:
    key: str
    x: int
    y: int
    node: object  # the run_scan.Node it draws


@dataclass(frozen=True)
class Graph:
    width: int
    height: int
    box_width: int
    box_height: int
    boxes: list[Box]
    paths: list[tuple[str, bool, str]]  # (SVG path data, ok, role)
    column_titles: list[tuple[int, str]]


COLUMN_TITLES = ("data / inputs", "backbone", "latents", "priors", "samples / evaluations")


def graph_layout(nodes: Sequence, edges: Sequence, column_of, box_width: int = 200, box_height: int = 40,
                 column_gap: int = 44, row_gap: int = 12) -> Graph:
    """Boxes in columns (`column_of(node)` -> 0..4), stacked in the given order; edges as curves between them."""
    columns: dict[int, list] = {}
    for node in nodes:
        columns.setdefault(column_of(node), []).append(node)
    boxes = {}
    top = 24
    for col, members in columns.items():
        for row, node in enumerate(members):
            boxes[node.key] = Box(node.key, 8 + col * (box_width + column_gap), top + row * (box_height + row_gap), node)
    drawn = [e for e in edges if e.parent in boxes and e.child in boxes]
    paths = [(_curve(boxes[e.parent], boxes[e.child], box_width, box_height), e.ok, e.role) for e in drawn]
    n_cols = max(columns) + 1 if columns else 1
    n_rows = max((len(m) for m in columns.values()), default=1)
    titles = [(8 + c * (box_width + column_gap), COLUMN_TITLES[c] if c < len(COLUMN_TITLES) else "") for c in range(n_cols)]
    return Graph(16 + n_cols * box_width + (n_cols - 1) * column_gap, top + n_rows * (box_height + row_gap), box_width, box_height,
                 list(boxes.values()), paths, titles)


def _curve(parent: Box, child: Box, box_width: int, box_height: int) -> str:
    """A cubic curve from the parent's right edge to the child's left edge (or below, in one column)."""
    x0, y0 = parent.x + box_width, parent.y + box_height / 2
    x1, y1 = child.x, child.y + box_height / 2
    if x1 <= x0:  # same column: leave on the right, come back on the right
        x1 = child.x + box_width
        return f"M{x0},{y0} C{x0 + 30},{y0} {x1 + 30},{y1} {x1},{y1}"
    mid = (x0 + x1) / 2
    return f"M{x0},{y0} C{mid},{y0} {mid},{y1} {x1},{y1}"
