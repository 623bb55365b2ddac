"""Every artifact file gets the mode a new file normally gets (0666 minus the umask), whoever wrote it."""

from __future__ import annotations

import os
import stat

import pytest
import torch

from hebmctl.io.atomic import current_umask, write_text
from hebmctl.io.state import save_tensors


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_every_file_of_an_artifact_has_the_same_mode(tiny_backbone):
    expected = 0o666 & ~current_umask()
    files = [p for p in tiny_backbone.rglob("*") if p.is_file()]
    assert any(p.suffix == ".safetensors" for p in files) and any(p.suffix == ".png" for p in files)
    assert {p.relative_to(tiny_backbone).as_posix(): oct(_mode(p)) for p in files} == {
        p.relative_to(tiny_backbone).as_posix(): oct(expected) for p in files}


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_written_files_respect_the_umask(tmp_path, umask):
    old = os.umask(umask)
    try:
        assert current_umask() == umask
        save_tensors(tmp_path / "w.safetensors", {"x": torch.zeros(2)})  # safetensors alone would create 0600
        write_text(tmp_path / "m.json", "{}")
    finally:
        os.umask(old)
    assert _mode(tmp_path / "w.safetensors") == _mode(tmp_path / "m.json") == 0o666 & ~umask
