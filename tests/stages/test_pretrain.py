import json
import shutil

import numpy as np
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


def test_update_skipper_counts_skips_and_stops_a_stall():
    from hebmctl.errors import DivergenceError
    from hebmctl.stages.pretrain import UpdateSkipper

    skipper = UpdateSkipper(threshold=10.0, window=10, stall_fraction=0.9)
    assert [skipper.should_skip(g) for g in (1.0, 11.0, float("nan"), 9.99)] == [False, True, True, False]
    assert skipper.total == 2
    restored = UpdateSkipper(threshold=10.0, window=10, stall_fraction=0.9)
    restored.restore(skipper.to_dict())
    assert restored.total == 2 and restored.recent == skipper.recent
    with pytest.raises(DivergenceError, match="stalled"):
        for _ in range(10):
            restored.should_skip(50.0)
    assert UpdateSkipper(threshold=None).should_skip(1e30) is False  # off: only non-finite norms are skipped


def test_skipped_updates_leave_the_weights_and_are_counted(tmp_path, single_thread):
    from safetensors.torch import load_file

    from hebmctl.stages import pretrain as stage

    manifest = stage.run(tiny_pretrain_config(tmp_path / "skip", steps=4, skip_grad_norm=1e-9, ema_decay=0.0))
    assert manifest.metrics["skipped_updates"] == 4
    torch.manual_seed(0)  # the stage seeds its initialisation with the config's seed (0)
    init = stage.build_backbone(tiny_pretrain_config(tmp_path / "x"), (28, 28, 1))
    weights = load_file(str(tmp_path / "skip" / "weights.safetensors"))
    assert torch.equal(weights["decoder.fc.0.weight"], init.state_dict()["decoder.fc.0.weight"])  # every update was skipped


def _err(capsys) -> str:
    return " ".join(capsys.readouterr().err.split())  # undo rich's line wrapping


def test_damaged_backbone_is_rebuilt_not_reported_up_to_date(tmp_path, tiny_backbone, capsys):
    """A truncated weights file (and a changed PNG of the same size): re-running the stage rebuilds them
    from the final checkpoint, bit for bit, so the original manifest and its children's lineage stay valid."""
    folder = tmp_path / "copy"
    shutil.copytree(tiny_backbone, folder)
    before = (folder / "manifest.json").read_bytes()
    weights, grid = folder / "weights.safetensors", folder / "prior_samples.png"
    original_weights, original_grid = weights.read_bytes(), grid.read_bytes()
    weights.write_bytes(original_weights[:1000])
    grid.write_bytes(original_grid[:-1] + bytes([original_grid[-1] ^ 1]))
    pretrain.run(tiny_pretrain_config(folder))
    err = _err(capsys)
    assert "is damaged" in err and "up to date" not in err
    assert weights.read_bytes() == original_weights and grid.read_bytes() == original_grid
    assert (folder / "manifest.json").read_bytes() == before
    load_backbone(folder, torch.device("cpu"))  # intact again


def test_damaged_newest_checkpoint_falls_back_to_the_previous_one(tmp_path, tiny_backbone, capsys):
    config = tiny_pretrain_config(tmp_path / "b")
    pretrain.run(config, pretrain.RunControl(stop_after=8))
    newest = tmp_path / "b" / "checkpoints" / "ckpt-000008" / "optimizer-adamw.safetensors"
    newest.write_bytes(newest.read_bytes()[:-10])  # e.g. a full disk while checkpointing
    pretrain.run(config)
    err = _err(capsys)
    assert "damaged checkpoint ckpt-000008" in err and "resuming from ckpt-000004" in err
    resumed, _ = load_tensors(tmp_path / "b" / "weights.safetensors")
    straight, _ = load_tensors(tiny_backbone / "weights.safetensors")
    assert all(torch.equal(resumed[k], straight[k]) for k in straight)


def _npz_data(path, n: int, size: int) -> str:
    images = np.random.default_rng(0).integers(0, 256, (n, size, size), dtype=np.uint8)
    np.savez(path, images=images)
    return f"npz:{path}"


@pytest.mark.parametrize(("n", "size", "phrase"), [(3, 28, "split 'test'.*is empty"), (20, 30, "divisible by 4"), (20, 1,
                                                                                                                   "divisible by 4")])
def test_too_small_or_misshaped_data_is_refused_before_anything_is_written(tmp_path, n, size, phrase):
    data = _npz_data(tmp_path / "d.npz", n, size)
    with pytest.raises(DataError, match=phrase):
        pretrain.run(tiny_pretrain_config(tmp_path / "out", data=data, eval_limit=None))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.npz"]  # no folder, no lock file


def test_fewer_than_8_test_images_still_give_grids(tmp_path):
    manifest = pretrain.run(tiny_pretrain_config(tmp_path / "b", eval_limit=3, steps=2))
    assert manifest.metrics["test"]["n_images"] == 3
    assert Image.open(tmp_path / "b" / "recon_grid.png").size[0] > 28 * 3


def test_eval_limit_is_not_part_of_the_training_fingerprint(tmp_path):
    from hebmctl.io.manifest import stage_fingerprint

    inputs = []
    default = tiny_pretrain_config(tmp_path, eval_limit=None)
    assert stage_fingerprint(tiny_pretrain_config(tmp_path, eval_limit=7), inputs) == stage_fingerprint(default, inputs)
    assert default.hashed_fields()["eval_limit"] is None  # hashed at its default: existing fingerprints stay valid
    assert stage_fingerprint(tiny_pretrain_config(tmp_path, steps=13), inputs) != stage_fingerprint(default, inputs)
