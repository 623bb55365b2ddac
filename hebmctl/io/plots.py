"""Line plots, histograms and ROC/PR curves as PNG (matplotlib, headless Agg backend), written atomically."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from hebmctl.io.atomic import atomic_path  # noqa: E402


def save_line_plot(path: Path, series: dict[str, Sequence[float]], title: str, xlabel: str, ylabel: str,
                   x: Sequence[float] | None = None) -> None:
    """One line per entry of `series` (name -> y values), shared x (default 0..n-1)."""
    fig, ax = plt.subplots(figsize=(6.4, 3.6), dpi=120)
    for name, ys in series.items():
        ax.plot(list(x) if x is not None else range(len(ys)), list(ys), label=name, linewidth=1.2)
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    if len(series) > 1:
        ax.legend()
    _save(fig, path)


def _save(fig, path: Path) -> None:
    fig.tight_layout()
    with atomic_path(Path(path)) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)


def save_histogram_panels(path: Path, panels: dict[str, dict[str, Sequence[float]]], xlabel: str, bins: int = 60) -> None:
    """One subplot per panel (title -> {set name -> values}); the sets share bins within a panel."""
    n = len(panels)
    cols = min(n, 3)
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.2 * rows), dpi=110, squeeze=False)
    for ax, (title, sets) in zip(axes.flat, panels.items()):
        values = [v for vs in sets.values() for v in vs]
        edges = np.histogram_bin_edges(values, bins=bins)
        for name, vs in sets.items():
            ax.hist(list(vs), bins=edges, alpha=0.55, density=True, label=name)
        ax.set_title(title)
        ax.set_xlabel(xlabel)
        ax.legend(fontsize=8)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    _save(fig, path)


def save_curves(path: Path, curves: dict[str, tuple[Sequence[float], Sequence[float]]], title: str, xlabel: str, ylabel: str,
                diagonal: bool = False) -> None:
    """One line per curve (name -> (x, y)) on [0, 1] x [0, 1]; `diagonal` adds the chance line y = x."""
    fig, ax = plt.subplots(figsize=(4.8, 4.4), dpi=120)
    for name, (xs, ys) in curves.items():
        ax.plot(list(xs), list(ys), label=name, linewidth=1.3)
    if diagonal:
        ax.plot([0, 1], [0, 1], color="gray", linestyle=":", linewidth=1)
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel, xlim=(0, 1), ylim=(0, 1.01))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    _save(fig, path)


def save_bar_chart(path: Path, values: dict[str, float], title: str, ylabel: str) -> None:
    """One labelled bar per entry (name -> value), the value printed above each bar."""
    fig, ax = plt.subplots(figsize=(1.2 * len(values) + 2, 3.4), dpi=120)
    bars = ax.bar(list(values), list(values.values()), color="tab:blue")
    ax.bar_label(bars, fmt="%.3f", fontsize=8)
    ax.set(title=title, ylabel=ylabel, ylim=(0, 1.08 * max(values.values())))
    ax.grid(alpha=0.3, axis="y")
    _save(fig, path)


HEATMAP_DPI = 120


def heatmap_figsize(rows: int, cols: int) -> tuple[float, float]:
    """Figure size in inches of `save_heatmap` for a `[rows, cols]` matrix (PNG = this x HEATMAP_DPI)."""
    return 1.6 + 0.9 * cols, 1.2 + 0.45 * rows


def save_heatmap(
    path: Path, matrix: np.ndarray, row_labels: Sequence[str], col_labels: Sequence[str], title: str, vmin: float = 0.0, vmax: float = 1.0
) -> None:
    """A `[rows, cols]` matrix as coloured cells (viridis, vmin..vmax), each annotated with its value."""
    matrix = np.asarray(matrix, dtype=float)
    fig, ax = plt.subplots(figsize=heatmap_figsize(*matrix.shape), dpi=HEATMAP_DPI)
    image = ax.imshow(matrix, cmap="viridis", vmin=vmin, vmax=vmax, aspect="auto")
    for (r, c), value in np.ndenumerate(matrix):
        ax.text(c, r, f"{value:.2f}", ha="center", va="center", fontsize=8, color="black" if value > (vmin + vmax) / 2 else "white")
    ax.set_xticks(range(len(col_labels)), list(col_labels))
    ax.set_yticks(range(len(row_labels)), list(row_labels))
    ax.set_title(title, fontsize=9)
    fig.colorbar(image, ax=ax, fraction=0.05)
    _save(fig, path)
