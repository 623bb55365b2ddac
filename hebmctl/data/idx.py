"""IDX readers: MNIST, Fashion-MNIST and the built-in MNIST test split (``builtin:mnist-10k``)."""

from __future__ import annotations

import gzip
import math
import struct
import zlib
from importlib import resources
from pathlib import Path

import numpy as np

from hebmctl.data.raw import RawSplit, from_arrays
from hebmctl.errors import DataError

MNIST_CLASSES: tuple[str, ...] = tuple(str(digit) for digit in range(10))
FASHION_MNIST_CLASSES: tuple[str, ...] = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)
IMAGES_MAGIC = 2051  # 0x00000803: unsigned bytes, 3 dimensions
LABELS_MAGIC = 2049  # 0x00000801: unsigned bytes, 1 dimension
IDX_FILES: dict[str, tuple[str, str]] = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
BUILTIN_TRAIN_SIZE = 9000  # builtin:mnist-10k: train = rows 0..8999, test = rows 9000..9999
_GZIP_MAGIC = b"\x1f\x8b"
_REDOWNLOAD = "Re-download or re-copy the file (the official files are byte-identical to ../shared/data/)."


def decompress_if_gzip(data: bytes, name: str) -> bytes:
    """Return ``data`` gunzipped if it starts with the gzip magic, else unchanged."""
    if not data.startswith(_GZIP_MAGIC):
        return data
    try:
        return gzip.decompress(data)
    except (OSError, EOFError, zlib.error) as exc:
        raise DataError(f"The gzip file {name} is truncated or corrupt ({exc}). {_REDOWNLOAD}") from exc


def _header(data: bytes, magic: int, ndim: int, name: str) -> tuple[int, ...]:
    """Validate an IDX header; return its dimensions (``ndim`` ints)."""
    size = 4 + 4 * ndim
    if len(data) < size:
        raise DataError(f"{name} is too short ({len(data)} bytes) to be an IDX file. {_REDOWNLOAD}")
    found, *dims = struct.unpack(f">{1 + ndim}I", data[:size])
    if found != magic:
        raise DataError(
            f"{name} is not an IDX {'image' if magic == IMAGES_MAGIC else 'label'} file: its magic "
            f"number is {found}, expected {magic}. Check that the file names match their contents. {_REDOWNLOAD}"
        )
    expected = size + math.prod(dims)
    if len(data) != expected:
        raise DataError(
            f"{name} has {len(data)} bytes but its header (dims {dims}) needs exactly {expected}; "
            f"the file is truncated or corrupt. {_REDOWNLOAD}"
        )
    return tuple(dims)


def parse_idx_images(data: bytes, name: str) -> np.ndarray:
    """Decompressed IDX image bytes -> uint8 ``[N, H, W]``."""
    count, height, width = _header(data, IMAGES_MAGIC, 3, name)
    if height == 0 or width == 0:
        raise DataError(f"{name} declares empty {height}x{width} images. {_REDOWNLOAD}")
    pixels = np.frombuffer(data, dtype=np.uint8, offset=16)
    return pixels.reshape(count, height, width)


def parse_idx_labels(data: bytes, name: str) -> np.ndarray:
    """Decompressed IDX label bytes -> int64 ``[N]``."""
    _header(data, LABELS_MAGIC, 1, name)
    return np.frombuffer(data, dtype=np.uint8, offset=8).astype(np.int64)


def find_idx_file(directory: Path, base: str) -> Path:
    """Path of ``base`` in ``directory``: ``base.gz``, ``base``, or the ``.idx`` dotted variant."""
    dotted = base.replace("-idx", ".idx")
    for candidate in (f"{base}.gz", base, f"{dotted}.gz", dotted):
        if (directory / candidate).is_file():
            return directory / candidate
    raise DataError(
        f"{directory} has no {base}.gz (nor {base} un-gzipped). An IDX data folder must hold "
        f"{', '.join(f'{n}.gz' for pair in IDX_FILES.values() for n in pair)}; check the path in the spec."
    )


def _read_file(path: Path) -> bytes:
    try:
        return decompress_if_gzip(path.read_bytes(), str(path))
    except OSError as exc:
        raise DataError(f"Cannot read {path} ({exc}). Check the file's permissions.") from exc


def load_idx_pair(images: bytes, labels: bytes, names: tuple[str, str], num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Decompressed IDX bytes -> (uint8 ``[N, H, W, 1]``, int64 ``[N]``), checking they match."""
    pixels = parse_idx_images(images, names[0])
    targets = parse_idx_labels(labels, names[1])
    if len(pixels) != len(targets):
        raise DataError(
            f"{names[0]} holds {len(pixels)} images but {names[1]} holds {len(targets)} labels; "
            f"the two files belong to different sets. {_REDOWNLOAD}"
        )
    if targets.size and int(targets.max()) >= num_classes:
        raise DataError(f"{names[1]} has label {int(targets.max())}, expected 0..{num_classes - 1}. {_REDOWNLOAD}")
    return pixels[..., np.newaxis], targets


def _load_idx_split(directory: Path, split: str, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    paths = tuple(find_idx_file(directory, base) for base in IDX_FILES[split])
    return load_idx_pair(_read_file(paths[0]), _read_file(paths[1]), (str(paths[0]), str(paths[1])), num_classes)


def idx_split(directory: Path, split: str, class_names: tuple[str, ...]) -> RawSplit:
    """``mnist:DIR`` / ``fashion-mnist:DIR``: the train or test files, or both concatenated ("all").

    index = position in the file (train, test) or in the train-then-test concatenation (all).
    """
    if not directory.is_dir():
        raise DataError(
            f"{directory} is not a folder. mnist:DIR and fashion-mnist:DIR need a folder with the "
            f"four IDX files (e.g. ../shared/data/mnist); check the path."
        )
    parts = [_load_idx_split(directory, name, len(class_names)) for name in (("train", "test") if split == "all" else (split,))]
    images = parts[0][0] if len(parts) == 1 else np.concatenate([p[0] for p in parts])
    labels = parts[0][1] if len(parts) == 1 else np.concatenate([p[1] for p in parts])
    return from_arrays(images, labels, np.arange(len(labels), dtype=np.int64), class_names)


def builtin_split(split: str) -> RawSplit:
    """``builtin:mnist-10k``: the MNIST test split shipped in the package (10,000 images, 28x28 gray).

    "train" = rows 0..8,999, "test" = rows 9,000..9,999, "all" = all 10,000; index = row in the file.
    """
    folder = resources.files("hebmctl.data") / "builtin"
    names = tuple(f"{base}.gz" for base in IDX_FILES["test"])
    try:
        blobs = [(folder / name).read_bytes() for name in names]
    except OSError as exc:
        raise DataError(
            f"The built-in MNIST files are missing from the installed package ({exc}). Reinstall hebmctl."
        ) from exc
    images, labels = load_idx_pair(
        decompress_if_gzip(blobs[0], names[0]), decompress_if_gzip(blobs[1], names[1]), names, 10
    )
    positions = np.arange(len(labels), dtype=np.int64)
    if split != "all":
        positions = positions[BUILTIN_TRAIN_SIZE:] if split == "test" else positions[:BUILTIN_TRAIN_SIZE]
    return from_arrays(images[positions], labels[positions], positions, MNIST_CLASSES)
