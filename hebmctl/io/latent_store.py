"""HDF5 latent cache, one file per split (DESIGN §4).

Datasets: `u0 [N, S, D]` (S posterior samples per image, D = sum of group dims, bottom group
first), optional `z [N, S, D]`, `labels [N]` int64, `index [N]` int64 (row of the data split).
Attributes: `group_dims`, `group_names`, `backbone_sha256`, `fingerprint`, `rows_written`.
Chunked by rows. The file is written as `<name>.h5.tmp` and renamed when complete; while
incomplete, `rows_written` says how far it got, so an interrupted run continues from there.
"""

from __future__ import annotations

import atexit
import json
import os
import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import h5py
import numpy as np

from hebmctl.errors import ArtifactError, LineageError
from hebmctl.io.atomic import commit, tmp_path_for
from hebmctl.io.hdf5_reports import held_back


@dataclass(frozen=True)
class LatentLayout:
    """Shape and storage options of one split's latent file."""

    n_rows: int
    samples_per_image: int
    group_dims: tuple[int, ...]
    group_names: tuple[str, ...]
    storage_dtype: Literal["float32", "float16"] = "float32"
    compression: Literal["none", "gzip", "lzf"] = "none"
    rows_per_chunk: int = 1024
    store_z: bool = False
    group_shapes: tuple[tuple[int, ...], ...] | None = None  # [d] or [c, h, w] per group; None = vectors

    @property
    def latent_dim(self) -> int:
        return sum(self.group_dims)


@contextmanager
def _disk_errors(path: Path) -> Iterator[None]:
    """HDF5 reports a failed write (full disk, file size limit) as a RuntimeError or an errno-less OSError whose
    text holds "errno = N": raise it as OSError(N) naming the file, which the CLI explains (found by the fault drills)."""
    try:
        with held_back():  # HDF5's repeats of a failed write would print as tracebacks (hebmctl.io.hdf5_reports)
            yield
    except (RuntimeError, OSError) as exc:
        found = re.search(r"errno = (\d+)", str(exc))
        if found is None or (isinstance(exc, OSError) and exc.errno):
            raise
        code = int(found.group(1))
        raise OSError(code, os.strerror(code), str(path)) from exc


EXIT_CODE_AFTER_FAILED_CLOSE = 2
"""The CLI's exit code for a disk it cannot write (the error that leaves an HDF5 file unclosable)."""


def _skip_hdf5_exit_handler() -> None:
    """A close that failed (a full disk) leaves datasets open inside HDF5, and HDF5's own exit handler
    then crashes (SIGSEGV) closing them, after the CLI's clear message (found by the fault drills,
    HDF5 2.0 in h5py 3.16). So such a process ends with `os._exit` from Python's exit handlers,
    before the C library's run: the data written so far is in the partial file, which the next run
    resumes."""

    def leave() -> None:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(EXIT_CODE_AFTER_FAILED_CLOSE)

    atexit.register(leave)


class LatentWriter:
    """Writes one split's latents, resumable. Use as a context manager; call `commit()` at the end."""

    def __init__(self, path: Path, layout: LatentLayout, backbone_sha256: str, fingerprint: str) -> None:
        self.path, self.layout = Path(path), layout
        self.tmp = tmp_path_for(self.path)
        self.tmp.parent.mkdir(parents=True, exist_ok=True)
        if self.tmp.exists() and not self._can_resume(backbone_sha256, fingerprint):
            self.tmp.unlink()
        fresh = not self.tmp.exists()
        with _disk_errors(self.tmp):
            self.file = h5py.File(self.tmp, "a", rdcc_nbytes=0)  # no chunk cache: no dirty chunk left to flush after a failed write
            try:
                if fresh:
                    self._create(backbone_sha256, fingerprint)
            except BaseException:
                self.close()  # no `with` block will close it
                raise

    def _can_resume(self, backbone_sha256: str, fingerprint: str) -> bool:
        """True if the partial file belongs to this run; refuses one made from another backbone."""
        try:
            with h5py.File(self.tmp, "r") as handle:
                recorded_backbone = str(handle.attrs["backbone_sha256"])
                recorded_fingerprint = str(handle.attrs["fingerprint"])
        except (OSError, KeyError):
            return False  # unreadable partial file (killed while creating it): start over
        if recorded_backbone != backbone_sha256:
            raise LineageError(
                f"The partial latent file {self.tmp} was being written from a backbone with manifest hash "
                f"{recorded_backbone[:12]}..., but the backbone given now has hash {backbone_sha256[:12]}.... "
                "Pass --force to discard the partial cache and start over with this backbone."
            )
        return recorded_fingerprint == fingerprint

    def _create(self, backbone_sha256: str, fingerprint: str) -> None:
        lay = self.layout
        chunk_rows = max(1, min(lay.rows_per_chunk, lay.n_rows))
        filters = {} if lay.compression == "none" else {"compression": lay.compression}
        shape = (lay.n_rows, lay.samples_per_image, lay.latent_dim)
        self.file.create_dataset("u0", shape=shape, dtype=lay.storage_dtype, chunks=(chunk_rows, *shape[1:]), **filters)
        if lay.store_z:
            self.file.create_dataset("z", shape=shape, dtype=lay.storage_dtype, chunks=(chunk_rows, *shape[1:]), **filters)
        self.file.create_dataset("labels", shape=(lay.n_rows,), dtype="int64")
        self.file.create_dataset("index", shape=(lay.n_rows,), dtype="int64")
        attrs = self.file.attrs
        attrs["group_dims"] = np.asarray(lay.group_dims, dtype=np.int64)
        attrs["group_names"] = np.asarray(lay.group_names, dtype=h5py.string_dtype())
        shapes = lay.group_shapes or tuple((d,) for d in lay.group_dims)
        attrs["group_shapes"] = json.dumps([list(s) for s in shapes])  # JSON: groups may differ in rank
        attrs["backbone_sha256"] = backbone_sha256
        attrs["fingerprint"] = fingerprint
        attrs["rows_written"] = 0
        self.file.flush()

    @property
    def rows_written(self) -> int:
        return int(self.file.attrs["rows_written"])

    def write(self, start: int, u0: np.ndarray, labels: np.ndarray, index: np.ndarray, z: np.ndarray | None = None) -> None:
        """Write rows [start, start + b): u0 (and z) `[b, S, D]`, labels and index `[b]`; then mark them written."""
        stop = start + len(u0)
        with _disk_errors(self.tmp):
            self.file["u0"][start:stop] = u0
            if z is not None:
                self.file["z"][start:stop] = z
            self.file["labels"][start:stop] = labels
            self.file["index"][start:stop] = index
            self.file.attrs["rows_written"] = stop
            self.file.flush()

    def commit(self) -> None:
        if self.rows_written != self.layout.n_rows:
            raise RuntimeError(f"commit with {self.rows_written} of {self.layout.n_rows} rows written")
        with _disk_errors(self.tmp):
            self.file.close()
        commit(self.tmp, self.path)

    def close(self) -> None:
        """Close after an error too. The partial file stays for the next run to resume, unless the close itself failed
        (the disk is full): then the file is removed and the next run starts this split again."""
        if not self.file.id.valid:
            return
        try:
            self.file.close()
        except (RuntimeError, OSError):  # the write error itself was raised already
            _skip_hdf5_exit_handler()
            self.tmp.unlink(missing_ok=True)  # HDF5 could not finish it: its structure may be broken (seen: "addr overflow" on resume)

    def __enter__(self) -> "LatentWriter":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def join_parts(path: Path, layout: LatentLayout, parts: list[tuple[Path, int]], backbone_sha256: str, fingerprint: str,
               block_rows: int) -> None:
    """Write the split file `path` from complete part files (each a latent file of some rows, with the
    row it starts at), copying `block_rows` rows at a time from row 0 (the batches a one-process run
    writes, so the file is written by the same sequence of writes), then delete the parts."""
    with LatentWriter(path, layout, backbone_sha256, fingerprint) as writer:
        for part, first_row in parts:
            with h5py.File(part, "r") as handle:
                rows = handle["u0"].shape[0]
                for start in range(0, rows, block_rows):
                    stop = min(start + block_rows, rows)
                    z = handle["z"][start:stop] if layout.store_z else None
                    writer.write(first_row + start, handle["u0"][start:stop], handle["labels"][start:stop], handle["index"][start:stop], z)
        writer.commit()
    for part, _ in parts:
        part.unlink()


@dataclass(frozen=True)
class LatentSplit:
    """One split's latents in memory: u0 float32 `[N, S, D]`, labels/index int64 `[N]`."""

    u0: np.ndarray
    labels: np.ndarray
    index: np.ndarray
    group_dims: tuple[int, ...]
    group_names: tuple[str, ...]
    backbone_sha256: str


def read_latents(path: Path) -> LatentSplit:
    """Read a complete latent file into memory (u0 as float32)."""
    path = Path(path)
    try:
        with h5py.File(path, "r") as handle:
            return LatentSplit(
                u0=handle["u0"][...].astype(np.float32, copy=False),
                labels=handle["labels"][...],
                index=handle["index"][...],
                group_dims=tuple(int(d) for d in handle.attrs["group_dims"]),
                group_names=tuple(str(n) for n in handle.attrs["group_names"]),
                backbone_sha256=str(handle.attrs["backbone_sha256"]),
            )
    except (OSError, KeyError) as exc:
        raise ArtifactError(f"Could not read the latent file {path} ({exc}). Delete the latent folder and re-run cache-latents.") from exc


def read_labels(path: Path) -> np.ndarray:
    """The labels `[N]` int64 of a complete latent file (-1 = unlabelled), without reading the latents."""
    path = Path(path)
    try:
        with h5py.File(path, "r") as handle:
            return handle["labels"][...].astype(np.int64)
    except (OSError, KeyError) as exc:
        raise ArtifactError(f"Could not read the labels of the latent file {path} ({exc}). Delete the latent folder and re-run "
                            "cache-latents.") from exc
