"""benchmarks/gpu_suite.py --smoke runs every section end to end on the CPU (the GPU run is the same script)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.mark.usefixtures("single_thread")
def test_gpu_suite_smoke_runs_every_section_on_the_cpu(tiny_backbone, tiny_latents, tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    sys.modules.pop("gpu_suite", None)
    import gpu_suite

    out = tmp_path / "suite.json"
    result = gpu_suite.main(["--smoke", "--root", str(tmp_path / "root"), "--backbone", str(tiny_backbone), "--latents", str(tiny_latents),
                             "--out", str(out)])
    assert json.loads(out.read_text()) == result
    sections = {r["section"] for r in result["records"]}
    assert sections == {"setup", *gpu_suite.SECTIONS}
    assert all(r["device_name"] for r in result["records"])
    assert not [r for r in result["records"] if "failed" in r]
    train = [r for r in result["records"] if r["section"] == "train"]
    assert {r["scheme"] for r in train} == {"diffusion", "joint"} and all(r["updates_per_s"] > 0 for r in train)
    sweep = next(r for r in result["records"] if r["section"] == "sweep")
    assert sweep["priors"] == 3 and sweep["speedup"] > 0
