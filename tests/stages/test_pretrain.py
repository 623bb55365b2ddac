import json
import shutil

import pytest
import torch
from PIL import Image

from hebmctl.errors import ArtifactError, DataError
from hebmctl.io.manifest import read_manifest
from hebmctl.io.state import load_tensors
from hebmctl.schemas import BackboneManifest
from hebmctl.stages import pretrain
from hebmctl.stages.artifacts import load_backbone

from tests.conftest import tiny_pretrain_config


def test_tiny_pretrain_writes_a_complete_backbone(tiny_backbone):
    manifest, _ = read_manifest(tiny_backbone, BackboneManifest)
    assert manifest.status == "complete" and manifest.image_shape == (28, 28, 1)
    assert {o.name for o in manifest.outputs} == {"weights.safetensors", "recon_grid.png", "prior_samples.png", "metrics.jsonl"}
    test = manifest.metrics["test"]
    assert 0 < test["recon_mse"] < 2 and len(test["active_units"]) == 3
    assert manifest.input("data:train").sha256  # lineage of the data
    grid = Image.open(tiny_backbone / "recon_grid.png")
    assert grid.size[0] > 28 * 8
    lines = [json.loads(line) for line in (tiny_backbone / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == [2, 4, 6, 8, 10, 12]
    assert {"loss", "recon_nll", "kl_per_layer", "elbo"} <= set(lines[0])
    loaded = load_backbone(tiny_backbone, torch.device("cpu"))
    assert loaded.model.group_dims == (8, 4, 2)


def test_resume_after_interruption_gives_identical_weights(tmp_path, tiny_backbone):
    """Stop at step 8 (checkpointed), re-run the same command: weights equal an uninterrupted run."""
    config = tiny_pretrain_config(tmp_path / "resumed")
    assert pretrain.run(config, pretrain.RunControl(stop_after=8)) is None
    assert not (tmp_path / "resumed" / "manifest.json").exists()
    manifest = pretrain.run(config)
    resumed, _ = load_tensors(tmp_path / "resumed" / "weights.safetensors")
    straight, _ = load_tensors(tiny_backbone / "weights.safetensors")
    assert resumed.keys() == straight.keys()
    for name in straight:
        assert torch.equal(resumed[name], straight[name]), name
    assert manifest.fingerprint == read_manifest(tiny_backbone, BackboneManifest)[0].fingerprint
    steps = [json.loads(line)["step"] for line in (tmp_path / "resumed" / "metrics.jsonl").read_text().splitlines()]
    assert steps == [2, 4, 6, 8, 10, 12]


def test_resume_from_older_checkpoint_when_newest_is_incomplete(tmp_path, tiny_backbone):
    config = tiny_pretrain_config(tmp_path / "b")
    pretrain.run(config, pretrain.RunControl(stop_after=8))
    (tmp_path / "b" / "checkpoints" / "ckpt-000008" / "state.json").unlink()  # crashed while checkpointing
    pretrain.run(config)
    resumed, _ = load_tensors(tmp_path / "b" / "weights.safetensors")
    straight, _ = load_tensors(tiny_backbone / "weights.safetensors")
    assert all(torch.equal(resumed[k], straight[k]) for k in straight)


def test_up_to_date_backbone_is_skipped_and_other_settings_refused(tmp_path, tiny_backbone):
    folder = tmp_path / "copy"
    shutil.copytree(tiny_backbone, folder)
    before = (folder / "manifest.json").read_bytes()
    pretrain.run(tiny_pretrain_config(folder))  # same settings: nothing to do
    assert (folder / "manifest.json").read_bytes() == before
    with pytest.raises(ArtifactError, match="other settings"):
        pretrain.run(tiny_pretrain_config(folder, steps=13))
    assert (folder / "manifest.json").read_bytes() == before  # nothing overwritten


def test_bad_data_spec_is_refused_before_anything_is_written(tmp_path):
    with pytest.raises(DataError):
        pretrain.run(tiny_pretrain_config(tmp_path / "x", data="mnist:/does/not/exist"))
    assert not (tmp_path / "x").exists()


def test_corrupt_weights_are_detected(tmp_path, tiny_backbone):
    folder = tmp_path / "copy"
    shutil.copytree(tiny_backbone, folder)
    with open(folder / "weights.safetensors", "r+b") as handle:
        handle.seek(200)
        handle.write(b"\xff\xff\xff\xff")
    with pytest.raises(ArtifactError, match="damaged"):
        load_backbone(folder, torch.device("cpu"))
