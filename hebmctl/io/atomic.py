"""Atomic file writes: write to a temporary name in the same folder, fsync, rename.

A reader never sees a half-written file under its final name; a crash leaves at most a
`*.tmp` file behind, which the next run overwrites.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from pathlib import Path


def tmp_path_for(path: Path) -> Path:
    """The temporary name a file is written under before it is renamed to `path`."""
    return path.with_name(path.name + ".tmp")


def fsync_dir(folder: Path) -> None:
    """Flush a folder's entry table so that a rename inside it survives a crash."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def current_umask() -> int:
    """The process's umask, read without changing it where Linux allows (/proc), else by setting it back."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def commit(tmp: Path, final: Path) -> None:
    """Give `tmp` the usual mode of a new file (0666 minus the umask), fsync it, rename it to `final`, fsync the folder.

    Every artifact file gets the same mode whichever library wrote it (safetensors creates 0600 files).
    """
    with open(tmp, "rb+") as handle:
        os.fchmod(handle.fileno(), 0o666 & ~current_umask())
        os.fsync(handle.fileno())
    os.replace(tmp, final)
    fsync_dir(final.parent)


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path to write; on success it is committed to `path`, on error removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = tmp_path_for(path)
    try:
        yield tmp
        commit(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_bytes(path: Path, data: bytes) -> None:
    """Atomically write `data` to `path`."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text(path: Path, text: str) -> None:
    """Atomically write UTF-8 `text` to `path`."""
    write_bytes(path, text.encode("utf-8"))


def write_with(path: Path, writer: Callable[[Path], None]) -> None:
    """Atomically write `path` with a function that writes a file at the path it is given."""
    with atomic_path(path) as tmp:
        writer(tmp)
