"""`hebmctl eval disentanglement` end to end on a tiny backbone trained on builtin:shapes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from hebmctl.cli import app
from hebmctl.data import load_split, to_unit_range
from hebmctl.errors import DataError
from hebmctl.io.manifest import read_manifest
from hebmctl.io.plots import HEATMAP_DPI, heatmap_figsize
from hebmctl.metrics.mig import active_dims, mig, mig_sup, normalised_mi
from hebmctl.schemas import EvalDisentanglementConfig
from hebmctl.schemas.eval import EvalDisentanglementManifest
from hebmctl.stages import eval_disentanglement, pretrain
from hebmctl.stages.artifacts import load_backbone
from hebmctl.stages.inspect import run as inspect_run

from tests.conftest import tiny_pretrain_config

N = 300


@pytest.fixture(scope="module")
def shapes_backbone(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("shapes") / "backbone"
    old = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: one thread is faster (see conftest.single_thread)
    try:
        config = tiny_pretrain_config(out, data="builtin:shapes", limit=256, eval_limit=64, steps=6, kl_warmup_steps=2, checkpoint_every=3)
        pretrain.run(config)
    finally:
        torch.set_num_threads(old)
    return out


def _direct_codes(backbone_dir: Path) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """Posterior-mean codes [N, D], the test factors [N, K] and the group dims, computed without the stage."""
    model = load_backbone(backbone_dir, torch.device("cpu")).model
    data = load_split("builtin:shapes", "test", limit=N)
    with torch.no_grad():
        z, _ = model.posterior(to_unit_range(data.images), None, sample=False)
    groups = [g.reshape(N, -1).double().numpy() for g in model.split_groups(z)]
    return np.concatenate(groups, axis=1), data.factors, [g.shape[1] for g in groups]


def test_cli_result_matches_a_direct_recomputation(tmp_path, shapes_backbone, single_thread):
    codes, factors, group_dims = _direct_codes(shapes_backbone)
    # The few-step backbone's codes barely vary (variances ~1e-6): a threshold at the median
    # variance makes about half of the dimensions active, so MIG-sup over them differs from all.
    threshold = float(np.median(codes.var(axis=0)))
    nmi, active = normalised_mi(codes, factors), active_dims(codes, threshold)
    out = tmp_path / "dis"
    args = ["eval", "disentanglement", "--backbone", str(shapes_backbone), "--out", str(out), "--limit", str(N),
            "--active-threshold", repr(threshold), "--device", "cpu", "--json"]
    run = CliRunner().invoke(app, args)
    assert run.exit_code == 0, run.output
    result = json.loads((out / "result.json").read_text())
    assert json.loads(run.stdout.strip().splitlines()[-1]) == result
    assert result["group_dims"] == group_dims == [8, 4, 2] and result["n"] == N and result["bins"] == 20
    assert result["mig"] == pytest.approx(mig(nmi), abs=1e-9)
    assert result["mig_sup_all_dims"] == pytest.approx(mig_sup(nmi), abs=1e-9)
    assert 0 < active.sum() < len(active) and result["mig_sup"] == pytest.approx(mig_sup(nmi, active), abs=1e-9)
    bounds = np.cumsum([0, *group_dims])
    names = ["z1", "z2", "z3"]
    for i, name in enumerate(names):
        cols = slice(bounds[i], bounds[i + 1])
        layer = result["layers"][name]
        assert layer["mig"] == pytest.approx(mig(nmi[:, cols]), abs=1e-9) and layer["active_dims"] == int(active[cols].sum())
        for k, factor in enumerate(result["factor_layer_nmi"]):
            assert result["factor_layer_nmi"][factor][name] == pytest.approx(nmi[k, cols].max(), abs=1e-9)
    assert list(result["factor_layer_nmi"]) == ["shape", "scale", "orientation", "x", "y", "object_hue", "background_hue"]
    for factor, row in result["factor_layer_nmi"].items():
        assert result["layer_of_factor"][factor] == max(row, key=row.get) and all(0 <= v <= 1 for v in row.values())
    # The heat map is factor x layer (7 x 3): its pixel size is that figure's.
    width, height = heatmap_figsize(7, 3)
    assert Image.open(out / "factor_layer_mi.png").size == (round(width * HEATMAP_DPI), round(height * HEATMAP_DPI))
    manifest, _ = read_manifest(out, EvalDisentanglementManifest)
    assert manifest.kind == "eval-disentanglement" and manifest.metrics == result
    assert {ref.role for ref in manifest.inputs} == {"backbone", "data:test"} and not inspect_run(out).problems


def test_data_without_factors_or_of_another_size_is_refused(tmp_path, shapes_backbone):
    common = dict(backbone=shapes_backbone, limit=20, device="cpu")
    with pytest.raises(DataError, match="no known generative factors"):
        eval_disentanglement.run(EvalDisentanglementConfig(data="builtin:mnist-10k", out=tmp_path / "a", **common))
    with pytest.raises(DataError, match="shape"):
        eval_disentanglement.run(EvalDisentanglementConfig(data="builtin:shapes-64", out=tmp_path / "b", **common))
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
