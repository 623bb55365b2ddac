"""Config of `hebmctl report`: one self-contained HTML page per run, or several runs side by side."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, field_validator, model_validator

from hebmctl.schemas.common import StrictModel, split_csv

REPORT_NAME = "report.html"
"""The page `hebmctl report RUN` (and `pipeline`) writes inside the run folder."""
COMPARE_NAME = "compare.html"
"""The page `hebmctl report RUN_A RUN_B ...` writes in the working folder unless --out is given."""


class ReportConfig(StrictModel):
    """Write one HTML file (images inlined, no network, no JavaScript) describing one run or comparing several."""

    runs: tuple[Path, ...] = Field(..., min_length=1, description="Run folders: one for a report of that run, several to compare them "
        "side by side.")
    out: Path = Field(None, description=f"HTML file to write (default: RUN/{REPORT_NAME} for one run, ./{COMPARE_NAME} for several).")
    check_hashes: bool = Field(True, description="Check every output file's sha256 against its manifest (--no-check-hashes: sizes only, "
        "faster on big caches).")
    max_curve_points: int = Field(400, ge=2, description="Training curves are thinned to at most this many points per line (every k-th "
        "logged step, and the last).")

    _runs = field_validator("runs", mode="before")(lambda cls, v: split_csv(v))

    @model_validator(mode="before")
    @classmethod
    def _default_out(cls, data):
        """--out defaults to RUN/report.html (one run) or ./compare.html (several)."""
        if isinstance(data, dict) and data.get("out") is None and data.get("runs"):
            runs = split_csv(data["runs"])
            data = dict(data) | {"out": Path(runs[0]) / REPORT_NAME if len(runs) == 1 else Path(COMPARE_NAME)}
        return data
