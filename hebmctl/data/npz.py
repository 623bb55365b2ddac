"""``npz:PATH``: images (and optional labels) stored as numpy arrays in one ``.npz`` file."""

from __future__ import annotations

import zipfile
import zlib
from pathlib import Path

import numpy as np

from hebmctl.data.raw import RawSplit, from_arrays, holdout_positions
from hebmctl.errors import DataError

NPZ_KEYS = ("images", "labels", "class_names")
_FORMAT = (
    "An npz data set needs key 'images' (uint8 [N,H,W] or [N,H,W,C] with C = 1 or 3) and may have "
    "'labels' (integers [N], -1 = unknown) and 'class_names' (strings [K])"
)


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    """All arrays of the file. Object arrays are refused (``allow_pickle=False``: loading them could run code)."""
    if not path.is_file():
        raise DataError(f"{path} does not exist or is not a file. Check the path in the npz: spec.")
    with open(path, "rb") as handle:
        head = handle.read(8)
    if head.startswith(b"\x93NUMPY"):
        raise DataError(f"{path} is a single .npy array, not an .npz archive. {_FORMAT}; save with numpy.savez.")
    if not head.startswith(b"PK"):  # an .npz is a zip archive
        raise DataError(f"Cannot read {path} as an .npz file: it is not the zip archive numpy.savez writes (it starts with "
                        f"{head!r}). {_FORMAT}; save with numpy.savez.")
    arrays = {}
    try:
        with np.load(path, allow_pickle=False) as loaded:
            for key in loaded.files:
                try:
                    arrays[key] = loaded[key]
                except ValueError as exc:
                    if "pickle" not in str(exc):
                        raise
                    raise DataError(f"{path}: '{key}' is an array of Python objects, which hebmctl does not read (loading one can run "
                                    f"code). {_FORMAT}: plain numeric arrays, e.g. images.astype(np.uint8).") from None
    except (ValueError, OSError, EOFError, zipfile.BadZipFile, zlib.error) as exc:
        raise DataError(f"Cannot read {path} as an .npz file ({exc}). {_FORMAT}; save with numpy.savez.") from exc
    return arrays


def _images(arrays: dict[str, np.ndarray], path: Path) -> np.ndarray:
    """Validated images -> uint8 ``[N, H, W, C]``."""
    images = arrays["images"]
    if images.dtype != np.uint8:
        raise DataError(
            f"{path}: 'images' has dtype {images.dtype}, not uint8. {_FORMAT}; scale to 0..255 and "
            f"convert with .astype(np.uint8)."
        )
    if images.ndim == 3:
        images = images[..., np.newaxis]
    if images.ndim != 4 or images.shape[3] not in (1, 3) or 0 in images.shape:
        raise DataError(f"{path}: 'images' has shape {arrays['images'].shape}. {_FORMAT}.")
    return images


def _labels(arrays: dict[str, np.ndarray], count: int, path: Path) -> np.ndarray:
    """Validated labels -> int64 ``[N]`` (all -1 when the file has none)."""
    if "labels" not in arrays:
        return np.full(count, -1, dtype=np.int64)
    labels = arrays["labels"]
    if labels.shape != (count,) or not np.issubdtype(labels.dtype, np.integer):
        raise DataError(f"{path}: 'labels' is {labels.dtype} {labels.shape}, expected integers [{count}]. {_FORMAT}.")
    if labels.size and int(labels.min()) < -1:
        raise DataError(f"{path}: 'labels' has {int(labels.min())}; labels must be >= 0, or -1 for unknown.")
    return labels.astype(np.int64)


def _class_names(arrays: dict[str, np.ndarray], path: Path) -> tuple[str, ...]:
    names = arrays.get("class_names")
    if names is None:
        return ()
    if names.ndim != 1 or names.dtype.kind not in "US":
        raise DataError(f"{path}: 'class_names' must be a 1-D string array, got {names.dtype} {names.shape}.")
    return tuple(n.decode("utf-8") if isinstance(n, bytes) else str(n) for n in names.tolist())


def npz_images(path: Path) -> np.ndarray:
    """The validated ``images`` of an npz file as uint8 ``[N, H, W, C]`` (other keys are ignored); DataError otherwise."""
    arrays = _read_npz(path)
    if "images" not in arrays:
        raise DataError(f"{path} has no key 'images' (keys found: {sorted(arrays)}). {_FORMAT}.")
    return _images(arrays, path)


def npz_split(path: Path, split: str) -> RawSplit:
    """Every 10th row (positions 9, 19, ...) is "test", the rest "train"; index = row in the file."""
    arrays = _read_npz(path)
    unknown = sorted(set(arrays) - set(NPZ_KEYS))
    if "images" not in arrays or unknown:
        problem = "no key 'images'" if "images" not in arrays else f"unexpected keys {unknown}"
        raise DataError(f"{path} has {problem} (keys found: {sorted(arrays)}). {_FORMAT}.")
    images = _images(arrays, path)
    labels = _labels(arrays, len(images), path)
    positions = holdout_positions(len(images), split)
    return from_arrays(images[positions], labels[positions], positions, _class_names(arrays, path))
