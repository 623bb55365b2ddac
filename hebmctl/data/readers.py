"""``load_split``: one entry point for every data spec kind."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from hebmctl.data.cifar import cifar10_split
from hebmctl.data.idx import FASHION_MNIST_CLASSES, MNIST_CLASSES, builtin_split, idx_split
from hebmctl.data.images import list_tree, tree_split
from hebmctl.data.imageset import ImageSet
from hebmctl.data.npz import npz_split
from hebmctl.data.protocols import pooled_of, pooled_split, split_record
from hebmctl.data.raw import RawSplit
from hebmctl.data.shapes import RESOLUTIONS, shapes_split
from hebmctl.data.specs import check_split, parse_spec
from hebmctl.data.subsets import SUBSET_SEED, subset_positions, subset_record
from hebmctl.errors import DataError

_READERS: dict[str, Callable[[str, str], RawSplit]] = {
    "mnist": lambda arg, split: idx_split(_path(arg), split, MNIST_CLASSES),
    "fashion-mnist": lambda arg, split: idx_split(_path(arg), split, FASHION_MNIST_CLASSES),
    "cifar10": lambda arg, split: cifar10_split(_path(arg), split),
    "folder": lambda arg, split: tree_split(list_tree(_path(arg)), split),
    "npz": lambda arg, split: npz_split(_path(arg), split),
    "builtin": lambda arg, split: shapes_split(arg, split) if arg in RESOLUTIONS else builtin_split(split),
    "pooled": lambda arg, split: pooled_split(arg, split, _read_raw),
}


def _read_raw(spec: str, split: str) -> RawSplit:
    kind, argument = parse_spec(spec)
    check_split(split, spec)
    return _READERS[kind](argument, split)


def _path(argument: str) -> Path:
    path = Path(argument).expanduser()
    if not path.exists():
        raise DataError(f"{path} does not exist. Check the path in the data spec (relative paths are from the current folder).")
    return path


def _check_excluded(labels: np.ndarray, excluded: list[int], where: str, num_classes: int = 0) -> None:
    """Each excluded id must occur in the split or be a class of the data set (an id below `num_classes`:
    a class that only another split holds, e.g. a user's own anomaly split whose train/ lacks it)."""
    present = sorted(set(np.unique(labels).tolist()) - {-1})
    missing = [c for c in excluded if c not in present and not (0 <= c < num_classes) and not (c == -1 and (labels == -1).any())]
    if not missing:
        return
    if not present:
        raise DataError(f"Cannot exclude classes {missing} from {where}: it has no labels. Drop the class exclusion.")
    raise DataError(
        f"Cannot exclude class {', '.join(map(str, missing))} from {where}: its labels are "
        f"{', '.join(map(str, present))}. Exclude only class ids that occur in the data."
    )


def select_rows(labels: np.ndarray, exclude_classes: Sequence[int], limit: int | None, where: str, num_classes: int = 0,
                seed: int = SUBSET_SEED) -> np.ndarray:
    """Rows (int64, ascending) kept: labels not in ``exclude_classes`` (each one of the split's labels or
    below ``num_classes``), then a seeded class-stratified random subset of ``limit`` of them (``hebmctl.data.subsets``)."""
    excluded = [int(c) for c in exclude_classes]
    _check_excluded(labels, excluded, where, num_classes)
    rows = np.flatnonzero(~np.isin(labels, excluded)).astype(np.int64)
    if limit is not None:
        if int(limit) < 1:
            raise DataError(f"limit must be a positive number of images, got {limit}. Leave it unset to load everything.")
        rows = rows[subset_positions(labels[rows], int(limit), seed)]
    if rows.size == 0:
        reason = (
            f"after excluding classes {excluded}"
            if excluded and labels.size
            else "it has no images; sets without their own train/test split put every 10th image in 'test'"
        )
        raise DataError(f"{where} is empty ({reason}). Check the data path, the split and the excluded classes.")
    return rows


def load_split(spec: str, split: str, exclude_classes: Sequence[int] = (), limit: int | None = None, seed: int = SUBSET_SEED) -> ImageSet:
    """Load one split of a data set as uint8 images ``[N, H, W, C]`` with int64 labels and index.

    Args:
        spec: ``mnist:DIR``, ``fashion-mnist:DIR``, ``cifar10:PATH``, ``folder:PATH``, ``npz:PATH``
            ``builtin:mnist-10k``, ``builtin:shapes`` or ``builtin:shapes-64`` (see DESIGN.md §5 and
            ``hebmctl.data.shapes``).
        split: "train", "test" or "all".
            - IDX sets and CIFAR-10 (pickles or ``train/``+``test/`` folders): their own splits;
              "all" = train then test.
            - ``builtin:mnist-10k`` (the MNIST *test* split shipped with hebmctl, 10,000 images):
              "train" = its first 9,000 images, "test" = the last 1,000, "all" = all 10,000.
            - ``builtin:shapes`` (procedural, 70,000 images with known factors): "train" = the first
              60,000 drawn, "test" = the last 10,000; only the rows kept are rendered.
            - ``pooled:heldout=D,seed=S:BASE``: the anchors' anomaly protocol (``hebmctl.data.protocols``);
              "train" = a seeded 80 % of BASE's pooled images not of class D, "test" = the rest.
            - folders without ``train/``+``test/`` and npz files: every 10th item (positions 9, 19,
              29, ... in sorted order) is "test", the rest "train"; "all" = everything.
        exclude_classes: label ids to drop; each must occur among the split's labels or be one of the data
            set's classes (a class only another split holds, e.g. the anomaly of a user's own train/ + test/ split).
        limit: keep a seeded, class-stratified random subset of ``limit`` rows after exclusion, in
            split order (image files outside it are not decoded); recorded in ``ImageSet.subset``.
        seed: the subset's seed (``hebmctl.data.subsets.SUBSET_SEED`` unless a caller needs another).

    Returns:
        ImageSet (with ``factors`` for ``builtin:shapes``, else None) whose ``index`` holds each row's position in the
        unfiltered split: in the file for
        IDX train/test and npz, in the builtin file (test = 9000..9999), in the sorted listing for
        folders without splits, in the split folder's sorted listing otherwise, in the train-then-test
        concatenation for "all" of sets that have their own splits.

    Raises:
        DataError: unknown spec kind, missing or corrupt files, bad arrays, unknown split, an
            excluded class that does not occur, or an empty result.
    """
    raw = _read_raw(spec, split)
    try:
        rows = select_rows(raw.labels, exclude_classes, limit, f"split {split!r} of {spec!r}", len(raw.class_names), seed)
        images = raw.decode(rows)
        population = int(np.count_nonzero(~np.isin(raw.labels, [int(c) for c in exclude_classes])))
    finally:
        raw.close()
    return ImageSet(
        images=np.ascontiguousarray(images),
        labels=raw.labels[rows],
        index=raw.index[rows],
        class_names=raw.class_names,
        spec=spec,
        split=split,
        factors=None if raw.factors is None else np.ascontiguousarray(raw.factors[rows]),
        factor_names=raw.factor_names,
        factor_sizes=raw.factor_sizes,
        subset=subset_record(raw.labels[rows], raw.index[rows], population, seed) if len(rows) < population else None,
    )


def load_labels(spec: str, split: str, exclude_classes: Sequence[int] = (), limit: int | None = None) -> np.ndarray:
    """The int64 labels ``[N]`` that ``load_split`` with the same arguments returns, without decoding any image."""
    raw = _read_raw(spec, split)
    try:
        return raw.labels[select_rows(raw.labels, exclude_classes, limit, f"split {split!r} of {spec!r}", len(raw.class_names))]
    finally:
        raw.close()


def describe_split(spec: str) -> dict | None:
    """The record of a protocol spec's split (sizes, positive fraction, row hashes; `SplitRecord`), None for other specs."""
    protocol = pooled_of(spec)
    if protocol is None:
        return None
    base = _read_raw(protocol.base, "all")
    try:
        return split_record(protocol, base.labels).model_dump()
    finally:
        base.close()
