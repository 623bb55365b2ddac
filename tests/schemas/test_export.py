"""The top-level schemas/ folder must hold exactly what hebmctl.schemas exports."""

from pathlib import Path

import pytest
from pydantic import ValidationError

from hebmctl.schemas import PretrainConfig, json_schemas
from hebmctl.schemas.export import render

SCHEMAS = Path(__file__).resolve().parents[2] / "schemas"


def test_exported_json_schemas_are_in_sync():
    expected = {name: render(schema) for name, schema in json_schemas().items()}
    on_disk = {p.name: p.read_text() for p in SCHEMAS.glob("*.json")}
    assert set(on_disk) == set(expected), "run: python -m hebmctl.schemas.export schemas/"
    for name, text in expected.items():
        assert on_disk[name] == text, f"{name} is stale: run python -m hebmctl.schemas.export schemas/"


def test_configs_are_frozen_strict_and_documented():
    config = PretrainConfig(latent_dims="16, 8,4", exclude_classes="1")
    assert config.latent_dims == (16, 8, 4) and config.exclude_classes == (1,)
    assert str(config.out) == "runs/default/backbone"
    with pytest.raises(ValidationError):
        PretrainConfig(stesp=10)  # typo: extra keys are forbidden
    with pytest.raises(ValidationError):
        config.steps = 5  # frozen
    for model_name, schema in json_schemas().items():
        if model_name.startswith("config."):
            for field, spec in schema["properties"].items():
                assert spec.get("description"), f"{model_name}: {field} has no description"


def test_relative_data_paths_are_made_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert PretrainConfig(data="mnist:data/mnist").data == f"mnist:{tmp_path / 'data' / 'mnist'}"
    assert PretrainConfig(data="builtin:mnist-10k").data == "builtin:mnist-10k"


def test_ood_and_anomaly_report_both_scores_by_default_and_name_each_term_set_apart():
    from hebmctl.schemas import EvalAnomalyConfig, EvalOodConfig

    default = EvalAnomalyConfig(run="r")
    assert default.terms == "both" and default.out == Path("r/eval/anomaly-gaussian")
    full = EvalAnomalyConfig(run="r", terms="full", prior="diffusion")
    assert full.out == Path("r/eval/anomaly-diffusion-full")
    ood = EvalOodConfig(run="r", ood="builtin:mnist-10k")
    assert ood.terms == "both" and ood.out == Path("r/eval/ood-gaussian")
    assert EvalOodConfig(run="r", ood="builtin:mnist-10k", terms="full").out == Path("r/eval/ood-gaussian-full")
    assert EvalOodConfig(run="r", ood="builtin:mnist-10k", terms="prior").out == Path("r/eval/ood-gaussian-prior")
    # manifests written before issue 12 say terms=latent: they still parse, as the prior-terms score
    legacy = EvalAnomalyConfig(run="r", terms="latent", out="r/eval/anomaly-gaussian")
    assert legacy.terms == "prior" and legacy.out == Path("r/eval/anomaly-gaussian")


def test_every_family_config_reads_back_from_its_manifest_json():
    """A manifest stores the resolved config as JSON; a family without latent_dims (nvae) stores null there,
    which must read back (it once failed as 'latent_dims: Input should be a valid tuple')."""
    import json

    from hebmctl.schemas import PretrainConfig

    for family in ("hvae", "vlae", "nvae"):
        config = PretrainConfig(backbone=family)
        assert PretrainConfig.model_validate(json.loads(config.model_dump_json())) == config
