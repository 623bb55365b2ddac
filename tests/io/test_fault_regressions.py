"""Regressions found by benchmarks/fault_drills.py (issue 14): damaged bytes and full disks give messages, not tracebacks."""

from __future__ import annotations

import errno
import json
import subprocess
import sys

import pytest
import torch
from safetensors import SafetensorError

from hebmctl.errors import ArtifactError
from hebmctl.io import state
from hebmctl.io.console import truncate_jsonl
from hebmctl.io.manifest import read_manifest
from hebmctl.schemas import BackboneManifest

from tests.conftest import REPO


def test_a_manifest_with_a_damaged_byte_is_an_artifact_error(tmp_path, tiny_backbone):
    raw = bytearray((tiny_backbone / "manifest.json").read_bytes())
    raw[100] = 0xDF  # not valid UTF-8 (json.loads raised UnicodeDecodeError, a traceback in every stage)
    (tmp_path / "manifest.json").write_bytes(bytes(raw))
    with pytest.raises(ArtifactError, match="not valid JSON"):
        read_manifest(tmp_path, BackboneManifest)


def test_resume_drops_damaged_log_lines(tmp_path):
    log = tmp_path / "metrics.jsonl"
    log.write_bytes(b'{"step": 1, "loss": 2.0}\n{"step": 2, "lo\xdd\n{"step": 3}\n\n{"step": 9}\n')
    truncate_jsonl(log, max_step=3)
    assert [json.loads(line)["step"] for line in log.read_text().splitlines()] == [1, 3]


def test_a_full_disk_in_the_safetensors_writer_is_an_os_error(tmp_path, monkeypatch):
    def full(*args, **kwargs):
        raise SafetensorError("Error while serializing: I/O error: File too large (os error 27)")

    monkeypatch.setattr(state, "save_file", full)
    with pytest.raises(OSError) as info:
        state.save_tensors(tmp_path / "w.safetensors", {"a": torch.zeros(3)})
    assert info.value.errno == errno.EFBIG and not list(tmp_path.iterdir())  # no temporary file left behind


def test_a_full_disk_in_the_hdf5_writer_is_an_os_error(tmp_path):
    """HDF5 reports a refused write as RuntimeError("... errno = 27 ..."): the latent writer raises OSError(EFBIG)."""
    script = f"""
import errno, resource, signal
import numpy as np
from hebmctl.io.latent_store import LatentLayout, LatentWriter
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))
layout = LatentLayout(n_rows=512, samples_per_image=1, group_dims=(64,), group_names=("z1",))
try:
    with LatentWriter({str(tmp_path / 'a.h5')!r}, layout, "b" * 64, "f") as w:
        w.write(0, np.ones((512, 1, 64), np.float32), np.zeros(512, np.int64), np.arange(512))
except OSError as exc:
    print("errno", exc.errno)
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert f"errno {errno.EFBIG}" in result.stdout, result.stdout + result.stderr
