"""Line plots as PNG (matplotlib, headless Agg backend), written atomically."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from hebmctl.io.atomic import atomic_path  # noqa: E402


def save_line_plot(path: Path, series: dict[str, Sequence[float]], title: str, xlabel: str, ylabel: str, x: Sequence[float] | None = None) -> None:
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
    fig.tight_layout()
    with atomic_path(Path(path)) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
