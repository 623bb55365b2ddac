"""One writer per artifact folder (a lock), and --force that never loses the old artifact (issue 14).

The lock and crash tests use real processes: a child that holds the lock, or a `hebmctl pretrain`
killed with SIGKILL in the middle of a --force run.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch

from hebmctl.data import load_split
from hebmctl.errors import ArtifactError, DivergenceError
from hebmctl.io.manifest import read_manifest, stage_fingerprint
from hebmctl.io.output import lock_path, partial_path, replaced_path
from hebmctl.schemas import BackboneManifest, SampleConfig
from hebmctl.schemas.common import InputRef
from hebmctl.stages import pretrain, sample
from hebmctl.stages.artifacts import load_backbone

from tests.conftest import REPO, tiny_pretrain_config

HOLD_LOCKS = """
import sys, time
from hebmctl.io.output import FolderLock
for folder in sys.argv[1:]:
    FolderLock(folder).acquire()
print("locked", flush=True)
time.sleep(300)
"""


def _python(*args: str, **kwargs) -> subprocess.Popen:
    env = os.environ | {"PYTHONPATH": str(REPO), "COLUMNS": "200"}
    return subprocess.Popen([sys.executable, *args], cwd=REPO, env=env, text=True, **kwargs)


def _wait_for(condition, proc: subprocess.Popen, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert proc.poll() is None, f"the child exited early ({proc.returncode})"
        assert time.monotonic() < deadline, "timed out waiting for the child"
        time.sleep(0.05)


def _fingerprint(config) -> str:
    train = load_split(config.data, "train", config.exclude_classes, config.limit)
    return stage_fingerprint(config, [InputRef(role="data:train", path=config.data, kind="data", sha256=train.fingerprint())])


def test_a_second_writer_is_refused_naming_the_holder_and_a_killed_holder_does_not_block(tmp_path, tiny_backbone):
    backbone, samples = tmp_path / "backbone", tmp_path / "samples"
    holder = _python("-c", HOLD_LOCKS, str(backbone), str(samples), stdout=subprocess.PIPE)
    try:
        assert holder.stdout.readline().strip() == "locked"
        for force in (False, True):  # a concurrent --force must not wipe the other job's files either
            with pytest.raises(ArtifactError, match=rf"being written by another hebmctl process \(PID {holder.pid},"):
                pretrain.run(tiny_pretrain_config(backbone), pretrain.RunControl(force=force, stop_after=2))
        assert not backbone.exists()
        with pytest.raises(ArtifactError, match=f"PID {holder.pid}"):  # every writing stage takes the lock
            sample.run(SampleConfig(backbone=tiny_backbone, out=samples, n=2, device="cpu"))
        assert not samples.exists()
    finally:
        holder.kill()  # SIGKILL: the process cannot release anything itself
        holder.wait()
    assert lock_path(backbone).is_file()  # the stale lock file is still there ...
    assert pretrain.run(tiny_pretrain_config(backbone), pretrain.RunControl(stop_after=2)) is None  # ... and does not block
    assert (backbone / "checkpoints" / "ckpt-000002" / "state.json").is_file()
    sample.run(SampleConfig(backbone=tiny_backbone, out=samples, n=2, device="cpu"))


def test_force_keeps_the_old_artifact_until_the_new_one_is_complete_and_resumes_it(tmp_path, tiny_backbone, capsys):
    folder = tmp_path / "b"
    shutil.copytree(tiny_backbone, folder)
    before = (folder / "manifest.json").read_bytes()
    # The new run fails (it diverges): the old artifact is back in place, intact, its lineage unchanged.
    with pytest.raises(DivergenceError):
        pretrain.run(tiny_pretrain_config(folder, lr=1e30), pretrain.RunControl(force=True))
    assert (folder / "manifest.json").read_bytes() == before
    load_backbone(folder, torch.device("cpu"))
    assert not replaced_path(folder).exists()
    # A --force run interrupted at step 8 (as by Ctrl-C): the old artifact stays, the partial run is kept ...
    new = tiny_pretrain_config(folder, steps=16)
    assert pretrain.run(new, pretrain.RunControl(force=True, stop_after=8)) is None
    assert (folder / "manifest.json").read_bytes() == before
    assert (partial_path(folder) / "checkpoints" / "ckpt-000008" / "state.json").is_file()
    capsys.readouterr()
    # ... and the same command continues it.
    manifest = pretrain.run(new, pretrain.RunControl(force=True))
    err = " ".join(capsys.readouterr().err.split())
    assert "continuing the interrupted --force run" in err and "resuming from ckpt-000008" in err
    assert manifest.fingerprint == _fingerprint(new) and manifest.config.steps == 16
    assert read_manifest(folder, BackboneManifest)[0].fingerprint == manifest.fingerprint
    assert not replaced_path(folder).exists() and not partial_path(folder).exists()


def test_a_force_run_on_a_full_disk_puts_the_old_artifact_back(tmp_path, tiny_backbone, monkeypatch):
    """Every fsync fails with ENOSPC once the new run starts writing: the run stops with a write error
    and the old artifact is the folder again at once (the roll-back's own renames must not give up
    when the folder's fsync fails)."""
    import errno

    folder = tmp_path / "b"
    shutil.copytree(tiny_backbone, folder)
    before = (folder / "manifest.json").read_bytes()

    def full_disk(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", full_disk)
    with pytest.raises(ArtifactError, match="No space left"):
        pretrain.run(tiny_pretrain_config(folder, steps=4), pretrain.RunControl(force=True))
    monkeypatch.undo()
    assert (folder / "manifest.json").read_bytes() == before and not replaced_path(folder).exists()
    load_backbone(folder, torch.device("cpu"))


def test_a_force_run_killed_midway_loses_nothing(tmp_path, tiny_backbone, capsys):
    folder = tmp_path / "b"
    shutil.copytree(tiny_backbone, folder)
    before = (folder / "manifest.json").read_bytes()
    args = ["-m", "hebmctl", "pretrain", "--out", str(folder), "--force", "--steps", "100000", "--limit", "512", "--eval-limit", "128",
            "--latent-dims", "8,4,2", "--channels", "8", "--mlp-hidden", "32", "--batch-size", "32", "--kl-warmup-steps", "4",
            "--checkpoint-every", "4", "--log-every", "2", "--device", "cpu"]
    child = _python(*args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_for(lambda: (folder / "checkpoints" / "ckpt-000004" / "state.json").is_file(), child)
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    assert (replaced_path(folder) / "manifest.json").read_bytes() == before  # the old artifact, aside
    with pytest.raises(ArtifactError, match="being replaced by a --force run"):
        read_manifest(folder, BackboneManifest)
    # The next run on the folder puts the old artifact back (and it is up to date for its own settings).
    manifest = pretrain.run(tiny_pretrain_config(folder))
    assert (folder / "manifest.json").read_bytes() == before and manifest.config.steps == 12
    assert "restored the previous artifact" in " ".join(capsys.readouterr().err.split())
    assert (partial_path(folder) / "checkpoints" / "ckpt-000004" / "state.json").is_file()
    assert not replaced_path(folder).exists()


def test_a_replaced_folder_left_after_the_new_manifest_is_cleaned_up(tmp_path, tiny_backbone):
    """Crash after the new manifest was written but before the old folder was deleted."""
    folder = tmp_path / "b"
    shutil.copytree(tiny_backbone, folder)
    shutil.copytree(tiny_backbone, replaced_path(folder))
    pretrain.run(tiny_pretrain_config(folder))  # up to date
    assert not replaced_path(folder).exists() and (folder / "manifest.json").is_file()
