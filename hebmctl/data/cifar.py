"""CIFAR-10: the python-version pickles (``cifar-10-batches-py``) or an image zip/folder.

The pickles are read with ``RestrictedUnpickler``, which can rebuild numpy arrays and nothing
else, so a crafted batch file cannot run code.
"""

from __future__ import annotations

import importlib
import io
import pickle
from pathlib import Path
from typing import Any

import numpy as np

from hebmctl.data.images import has_split_folders, list_tree, tree_split
from hebmctl.data.raw import RawSplit, from_arrays
from hebmctl.errors import DataError

CIFAR10_CLASSES: tuple[str, ...] = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
)
BATCH_FILES: dict[str, tuple[str, ...]] = {
    "train": tuple(f"data_batch_{k}" for k in range(1, 6)),
    "test": ("test_batch",),
}
PICKLE_FOLDER = "cifar-10-batches-py"
_ALLOWED_GLOBALS: dict[tuple[str, str], tuple[str, str]] = {
    ("numpy.core.multiarray", "_reconstruct"): ("multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"): ("multiarray", "_reconstruct"),
    ("numpy", "ndarray"): ("numpy", "ndarray"),
    ("numpy", "dtype"): ("numpy", "dtype"),
}


def _multiarray() -> Any:
    """numpy's ``multiarray`` module (``numpy._core`` on numpy 2, ``numpy.core`` before)."""
    try:
        return importlib.import_module("numpy._core.multiarray")
    except ImportError:  # numpy < 1.26
        return importlib.import_module("numpy.core.multiarray")


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that resolves only numpy array reconstruction (``_reconstruct``, ``ndarray``, ``dtype``)."""

    def find_class(self, module: str, name: str) -> Any:
        target = _ALLOWED_GLOBALS.get((module, name))
        if target is None:
            raise pickle.UnpicklingError(f"global '{module}.{name}' is not allowed in a CIFAR batch")
        owner = _multiarray() if target[0] == "multiarray" else np
        return getattr(owner, target[1])


def restricted_load(data: bytes) -> Any:
    """Unpickle ``data`` (bytes strings kept as bytes) allowing only numpy array globals."""
    return RestrictedUnpickler(io.BytesIO(data), encoding="bytes").load()


def _read_pickle(path: Path) -> dict[Any, Any]:
    """A batch or meta pickle as a dict; DataError if unreadable or not a dict."""
    try:
        value = restricted_load(path.read_bytes())
    except FileNotFoundError as exc:
        raise DataError(
            f"{path} is missing. A {PICKLE_FOLDER} folder must hold data_batch_1..5, test_batch and "
            f"batches.meta; re-extract cifar-10-python.tar.gz."
        ) from exc
    except (pickle.UnpicklingError, EOFError, OSError, ValueError, TypeError, AttributeError, IndexError, KeyError) as exc:
        raise DataError(
            f"{path} is not a readable CIFAR-10 batch ({type(exc).__name__}: {exc}). Only plain "
            f"numpy arrays, lists and strings are accepted; re-extract cifar-10-python.tar.gz."
        ) from exc
    if not isinstance(value, dict):
        raise DataError(f"{path} holds a {type(value).__name__}, not a CIFAR-10 batch dict. Re-extract the archive.")
    return value


def _field(batch: dict[Any, Any], key: str, path: Path) -> Any:
    for candidate in (key.encode("ascii"), key):
        if candidate in batch:
            return batch[candidate]
    raise DataError(f"{path} has no '{key}' entry, so it is not a CIFAR-10 batch. Re-extract the archive.")


def read_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """One CIFAR-10 batch file -> (uint8 ``[N, 32, 32, 3]``, int64 ``[N]``)."""
    batch = _read_pickle(path)
    data, labels = _field(batch, "data", path), _field(batch, "labels", path)
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        shape = getattr(data, "shape", type(data).__name__)
        raise DataError(f"{path}: 'data' must be uint8 [N, 3072], got {shape}. Re-extract the archive.")
    targets = np.asarray(labels)
    if targets.shape != (len(data),) or not np.issubdtype(targets.dtype, np.integer):
        raise DataError(f"{path}: 'labels' must be {len(data)} integers, got {targets.shape}. Re-extract the archive.")
    images = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return np.ascontiguousarray(images), targets.astype(np.int64)


def read_class_names(folder: Path) -> tuple[str, ...]:
    """``label_names`` from ``batches.meta``, or CIFAR-10's own names if the file is absent."""
    meta = folder / "batches.meta"
    if not meta.is_file():
        return CIFAR10_CLASSES
    names = _field(_read_pickle(meta), "label_names", meta)
    if not isinstance(names, list):
        raise DataError(f"{meta}: 'label_names' must be a list of strings. Re-extract the archive.")
    return tuple(n.decode("utf-8") if isinstance(n, bytes) else str(n) for n in names)


def pickle_split(folder: Path, split: str) -> RawSplit:
    """The python-version batches: train = data_batch_1..5, test = test_batch, all = both.

    index = position in the concatenation of the split's batch files (in that order).
    """
    files = BATCH_FILES["train"] + BATCH_FILES["test"] if split == "all" else BATCH_FILES[split]
    parts = [read_batch(folder / name) for name in files]
    images = np.concatenate([p[0] for p in parts])
    labels = np.concatenate([p[1] for p in parts])
    return from_arrays(images, labels, np.arange(len(labels), dtype=np.int64), read_class_names(folder))


def _pickle_folder(path: Path) -> Path | None:
    """The folder holding the batch files, if ``path`` is (or directly contains) one."""
    for folder in (path, path / PICKLE_FOLDER):
        if folder.is_dir() and any((folder / name).is_file() for name in ("batches.meta", "data_batch_1", "test_batch")):
            return folder
    return None


def cifar10_split(path: Path, split: str) -> RawSplit:
    """``cifar10:PATH``: pickles if PATH is (or contains) cifar-10-batches-py, else an image zip/folder.

    An image zip/folder must have ``train/<class>/*`` and ``test/<class>/*`` (class ids =
    sorted folder names, which for CIFAR-10 is its own order airplane..truck).
    """
    folder = _pickle_folder(path)
    if folder is not None:
        return pickle_split(folder, split)
    if path.name.endswith((".tar.gz", ".tgz", ".tar")):
        raise DataError(f"{path} is a tar archive. Extract it first and give the {PICKLE_FOLDER} folder.")
    tree = list_tree(path)
    if not has_split_folders(tree):
        tree.close()
        raise DataError(
            f"{path} has no train/ and test/ folders and is not a {PICKLE_FOLDER} folder. cifar10:PATH "
            f"needs train/<class>/*.jpg + test/<class>/*.jpg (zip or folder) or the python batches; "
            f"for an image folder without splits use folder:PATH."
        )
    return tree_split(tree, split)
