"""Image folders and zips: listing, class layout, splits and decoding.

Image files are found by extension (case-insensitive), hidden files and ``__MACOSX`` are
skipped, and paths are sorted as relative POSIX strings, so the order is the same for a folder
and for a zip of it. The class of an image is the first folder below the split root (or below
the root if there are no ``train/`` + ``test/`` folders); images directly in that root get -1.
"""

from __future__ import annotations

import io
import os
import zipfile
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from hebmctl.data.raw import RawSplit, holdout_positions
from hebmctl.errors import DataError

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm", ".pbm"})
GRAY_MODES = frozenset({"1", "L", "LA"})
_ZIP_ERRORS = (zipfile.BadZipFile, zlib.error, OSError, EOFError, RuntimeError, NotImplementedError)
_IMAGE_ERRORS = (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError)


@dataclass(frozen=True, eq=False)
class ImageTree:
    """Image files of a folder or zip: ``paths`` are sorted relative POSIX paths below ``prefix``.

    ``archive`` is the open zip (None for a folder); ``close()`` it when done.
    """

    location: Path
    archive: zipfile.ZipFile | None
    prefix: str
    paths: tuple[str, ...]

    def close(self) -> None:
        if self.archive is not None:
            self.archive.close()


def _is_image(name: str) -> bool:
    parts = name.split("/")
    if any(part.startswith(".") or part == "__MACOSX" for part in parts):
        return False
    return os.path.splitext(parts[-1])[1].lower() in IMAGE_SUFFIXES


def _open_zip(location: Path) -> zipfile.ZipFile:
    try:
        return zipfile.ZipFile(location)
    except _ZIP_ERRORS as exc:
        raise DataError(f"Cannot read the zip file {location} ({exc}). Re-create or re-copy the zip.") from exc


def _folder_names(location: Path) -> list[str]:
    """Relative POSIX paths of every file below ``location``."""
    names: list[str] = []
    for folder, _, files in os.walk(location, onerror=_raise_walk_error):
        relative = Path(folder).relative_to(location).as_posix()
        names.extend(name if relative == "." else f"{relative}/{name}" for name in files)
    return names


def _raise_walk_error(exc: OSError) -> None:
    raise DataError(f"Cannot list the folder {exc.filename} ({exc.strerror}). Check its permissions.") from exc


def _top(path: str) -> str:
    return path.split("/", 1)[0]


def _strip_wrapper(paths: list[str]) -> tuple[str, list[str]]:
    """Drop one enclosing folder (``name/train/...``, ``name/test/...``) if that is all there is."""
    tops = {_top(p) for p in paths}
    if len(tops) != 1 or any(p.count("/") < 2 for p in paths):
        return "", paths
    prefix = f"{tops.pop()}/"
    inner = [p[len(prefix) :] for p in paths]
    return (prefix, inner) if {"train", "test"} <= {_top(p) for p in inner} else ("", paths)


def _list_names(location: Path) -> tuple[zipfile.ZipFile | None, list[str]]:
    if location.is_dir():
        return None, _folder_names(location)
    if location.is_file() and zipfile.is_zipfile(location):
        archive = _open_zip(location)
        return archive, [info.filename for info in archive.infolist() if not info.is_dir()]
    if location.exists():
        raise DataError(f"{location} is neither a folder nor a zip file. Give an image folder or a .zip of one.")
    raise DataError(f"{location} does not exist. Check the path in the data spec.")


def list_tree(location: Path) -> ImageTree:
    """List the image files of a folder or zip (sorted; see the module docstring)."""
    archive, names = _list_names(location)
    prefix, paths = _strip_wrapper(sorted(name for name in names if _is_image(name)))
    if not paths:
        if archive is not None:
            archive.close()
        raise DataError(
            f"{location} contains no image files (looked for {', '.join(sorted(IMAGE_SUFFIXES))}). "
            f"Check the path, or put the images in class sub-folders."
        )
    return ImageTree(location, archive, prefix, tuple(paths))


def has_split_folders(tree: ImageTree) -> bool:
    """True if the tree has top-level ``train/`` and ``test/`` folders."""
    return any(p.startswith("train/") for p in tree.paths) and any(p.startswith("test/") for p in tree.paths)


def _class_of(relative: str) -> str | None:
    """The first folder of a path below the split root, or None for a file directly in it."""
    cut = relative.find("/")
    return relative[:cut] if cut >= 0 else None


def _split_members(tree: ImageTree, split: str) -> list[str]:
    """Paths below the ``train/`` or ``test/`` folder (relative to that folder)."""
    start = f"{split}/"
    return [p[len(start) :] for p in tree.paths if p.startswith(start)]


def _select_members(tree: ImageTree, split: str) -> tuple[list[str], list[str], np.ndarray, list[str]]:
    """(members: tree paths of ``split``, their paths below the split root, index, class names)."""
    if has_split_folders(tree):
        by_split = {name: _split_members(tree, name) for name in ("train", "test")}
        chosen = ("train", "test") if split == "all" else (split,)
        members = [f"{name}/{rel}" for name in chosen for rel in by_split[name]]
        relative = [rel for name in chosen for rel in by_split[name]]
        index = np.arange(len(members), dtype=np.int64)
        classes = {_class_of(rel) for rels in by_split.values() for rel in rels}
    else:
        index = holdout_positions(len(tree.paths), split)
        members = relative = [tree.paths[i] for i in index]
        classes = {_class_of(path) for path in tree.paths}
    return members, relative, index, sorted(name for name in classes if name is not None)


def tree_split(tree: ImageTree, split: str) -> RawSplit:
    """The RawSplit of ``split``; nothing is decoded until ``decode`` is called.

    With top-level ``train/`` and ``test/`` folders those are the splits ("all" = train then
    test; anything else at the top is ignored) and index = position in the split's sorted
    listing; class ids come from the class folders of both splits, so they agree between
    splits. Otherwise every 10th image (sorted positions 9, 19, ...) is "test", the rest
    "train", and index = position in the whole sorted listing.
    """
    members, relative, index, classes = _select_members(tree, split)
    ids = {name: k for k, name in enumerate(classes)}
    labels = np.array([ids.get(_class_of(rel), -1) for rel in relative], dtype=np.int64)
    return RawSplit(
        labels, index, lambda rows: read_images(tree, [members[i] for i in rows]), tuple(classes), tree.close
    )


def _pixels(image: Image.Image) -> np.ndarray:
    """A PIL image -> uint8 ``[H, W, C]``: gray modes -> C = 1, anything else -> RGB, C = 3."""
    if image.mode in GRAY_MODES:
        gray = image if image.mode == "L" else image.convert("L")
        return np.asarray(gray)[..., np.newaxis]
    return np.asarray(image if image.mode == "RGB" else image.convert("RGB"))


def decode_image(data: bytes, name: str) -> np.ndarray:
    """Encoded image bytes -> uint8 ``[H, W, C]`` (C = 1 gray, 3 RGB); DataError if unreadable."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            return _pixels(image)
    except _IMAGE_ERRORS as exc:
        raise DataError(f"Cannot decode the image {name} ({exc}). Remove or replace that file.") from exc


def _decode_all(members: Sequence[str], read: Callable[[str], bytes], label: Callable[[str], str]) -> np.ndarray:
    """Decode ``members`` in order into one uint8 ``[n, H, W, C]`` array; all must agree in shape."""
    first = decode_image(read(members[0]), label(members[0]))
    out = np.empty((len(members), *first.shape), dtype=np.uint8)
    out[0] = first
    for row, member in enumerate(members[1:], start=1):
        pixels = decode_image(read(member), label(member))
        if pixels.shape != first.shape:
            raise DataError(
                f"The image {label(member)} is {_describe(pixels)} but {label(members[0])} is "
                f"{_describe(first)}; all images of a data set must have the same size and mode. "
                f"Resize or convert the odd images, or remove them."
            )
        out[row] = pixels
    return out


def _describe(pixels: np.ndarray) -> str:
    height, width, channels = pixels.shape
    return f"{width}x{height} {'gray' if channels == 1 else 'RGB'}"


def read_images(tree: ImageTree, members: Sequence[str]) -> np.ndarray:
    """Decode the tree paths ``members`` (non-empty, in order) -> uint8 ``[n, H, W, C]``.

    Runs in the calling thread: a thread pool over the zip members was measured slower for
    CIFAR-size JPEGs (per-file work in PIL is mostly Python code that holds the GIL).
    """
    root = tree.location / tree.prefix if tree.prefix else tree.location
    if tree.archive is None:
        return _decode_all(members, lambda member: _read_file(root / member), lambda member: str(root / member))
    archive = tree.archive

    def read_member(member: str) -> bytes:
        try:
            return archive.read(tree.prefix + member)
        except _ZIP_ERRORS as exc:
            raise DataError(f"Cannot read {member} from the zip {tree.location} ({exc}). Re-create or re-copy the zip.") from exc

    return _decode_all(members, read_member, lambda member: f"{tree.location}:{tree.prefix}{member}")


def _read_file(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise DataError(f"Cannot read {path} ({exc}). Check the file and its permissions.") from exc
