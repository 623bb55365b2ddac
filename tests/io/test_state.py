import json

import pytest
import torch

from hebmctl.errors import ArtifactError
from hebmctl.io.atomic import atomic_path, write_text
from hebmctl.io.checkpoints import TrainingState, latest_checkpoint, load_checkpoint, save_checkpoint
from hebmctl.io.state import load_tensors, optimizer_from_tensors, optimizer_to_tensors, save_tensors


def _model_and_optimizer(seed: int):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 1))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, betas=(0.8, 0.95))
    for _ in range(3):
        opt.zero_grad()
        model(torch.randn(8, 3)).pow(2).mean().backward()
        opt.step()
    return model, opt


def test_optimizer_state_round_trip_through_safetensors(tmp_path):
    model, opt = _model_and_optimizer(0)
    tensors, meta = optimizer_to_tensors(opt)
    save_tensors(tmp_path / "opt.safetensors", tensors, {"optimizer": meta})
    loaded, metadata = load_tensors(tmp_path / "opt.safetensors")
    model2, opt2 = _model_and_optimizer(1)
    model2.load_state_dict(model.state_dict())
    optimizer_from_tensors(opt2, loaded, metadata["optimizer"])
    # Both optimizers must now take identical steps.
    x = torch.randn(8, 3)
    for m, o in ((model, opt), (model2, opt2)):
        o.zero_grad()
        m(x).pow(2).mean().backward()
        o.step()
    for p1, p2 in zip(model.parameters(), model2.parameters()):
        assert torch.equal(p1, p2)


def test_atomic_write_leaves_nothing_on_error(tmp_path):
    target = tmp_path / "f.txt"
    write_text(target, "old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("crash")
    assert target.read_text() == "old"
    assert not list(tmp_path.glob("*.tmp"))


def test_corrupt_safetensors_is_a_clear_error(tmp_path):
    bad = tmp_path / "w.safetensors"
    bad.write_bytes(b"\x00garbage" * 10)
    with pytest.raises(ArtifactError, match="corrupt"):
        load_tensors(bad)
    with pytest.raises(ArtifactError, match="does not exist"):
        load_tensors(tmp_path / "missing.safetensors")


def test_checkpoints_keep_last_n_and_restore_rng(tmp_path):
    model, opt = _model_and_optimizer(0)
    gen = torch.Generator().manual_seed(7)
    state = TrainingState({"model": model}, {"adamw": opt}, {"noise": gen})
    for step in (1, 2, 3):
        save_checkpoint(tmp_path, step, "fp", state, {"wall_s": step}, keep=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt-000002", "ckpt-000003"]
    expected = torch.randn(4, generator=gen)
    newest = latest_checkpoint(tmp_path, "fp")
    step, extra = load_checkpoint(newest, state)
    assert step == 3 and extra == {"wall_s": 3}
    assert torch.equal(torch.randn(4, generator=gen), expected)


def test_checkpoint_from_another_device_type_is_refused_clearly(tmp_path):
    """A CUDA generator's state (Philox: 16 bytes) cannot seed a CPU generator: say so, do not crash."""
    from safetensors.torch import load_file, save_file

    model, opt = _model_and_optimizer(0)
    state = TrainingState({"model": model}, {"adamw": opt}, {"noise": torch.Generator().manual_seed(7)})
    folder = save_checkpoint(tmp_path, 1, "fp", state, {}, keep=2)
    rng = load_file(folder / "rng.safetensors")
    rng["noise"] = torch.zeros(16, dtype=torch.uint8)  # the size of a CUDA generator's state
    save_file(rng, folder / "rng.safetensors")
    with pytest.raises(ArtifactError, match="another kind of device.*--device"):
        load_checkpoint(folder, state)


def test_checkpoint_without_state_json_is_ignored_and_other_runs_refused(tmp_path):
    model, opt = _model_and_optimizer(0)
    state = TrainingState({"model": model}, {"adamw": opt}, {})
    save_checkpoint(tmp_path, 1, "fp", state, {}, keep=5)
    save_checkpoint(tmp_path, 2, "fp", state, {}, keep=5)
    (tmp_path / "ckpt-000002" / "state.json").unlink()  # killed while writing checkpoint 2
    assert latest_checkpoint(tmp_path, "fp").name == "ckpt-000001"
    with pytest.raises(ArtifactError, match="other settings"):
        latest_checkpoint(tmp_path, "another-fingerprint")
    assert json.loads((tmp_path / "ckpt-000001" / "state.json").read_text())["step"] == 1
