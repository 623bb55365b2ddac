"""Every shipped pipeline config must resolve to valid stage configs."""

from pathlib import Path

import pytest

from hebmctl.stages.pipeline import load_plan

EXAMPLES = sorted((Path(__file__).resolve().parents[1] / "examples").glob("*.toml"))


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_configs_resolve(path, tmp_path):
    plan = load_plan(path, tmp_path / "run")
    assert plan.pretrain.out == tmp_path / "run" / "backbone"
    assert len(plan.samples) == 1 + len(plan.priors)


def test_builtin_demo_resolves(tmp_path):
    plan = load_plan(None, tmp_path)
    assert plan.pretrain.data == "builtin:mnist-10k" and [p.scheme for p in plan.priors] == ["diffusion"]
