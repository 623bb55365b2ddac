"""Anomaly split protocols: the anchors' pooled 80/20 split (DESIGN §6) as a data spec.

`pooled:heldout=D,seed=S:BASE` (e.g. `pooled:heldout=4,seed=0:mnist:../shared/data/mnist`) is a
data set whose splits are Zenati et al.'s protocol on the labelled set BASE:

- the pooled set is BASE's "all" split (MNIST: 60,000 train then 10,000 test = 70,000 images);
- the normal images (label != D), in pooled order, are shuffled by `RandomState(S).permutation`;
  "train" = the first floor(0.8 n_normal) of them;
- "test" = the other normal images plus every image of class D (MNIST: 35 % positives for D = 4,
  39 % for D = 1; `SplitRecord.positive_fraction`);
- "all" = the whole pooled set.

Rows of each split are in pooled order (ascending), and `index` is the position in the pooled set,
so the data fingerprint of a split pins its membership.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable

import numpy as np

from hebmctl.data.raw import RawSplit
from hebmctl.data.specs import parse_spec
from hebmctl.errors import DataError
from hebmctl.schemas.protocols import POOLED_KIND, PooledSplit, SplitRecord

FORM = "pooled:heldout=D,seed=S:BASE (the anchors' anomaly protocol on the labelled set BASE, e.g. pooled:heldout=4,seed=0:mnist:DIR)"


def parse_pooled(argument: str) -> PooledSplit:
    """`'heldout=4,seed=0:mnist:DIR'` (the part after `pooled:`) -> PooledSplit; DataError if malformed."""
    options, _, base = argument.partition(":")
    values: dict[str, str] = {}
    for item in filter(None, (part.strip() for part in options.split(","))):
        key, eq, value = item.partition("=")
        if not eq or key.strip() not in ("heldout", "seed") or key.strip() in values:
            raise DataError(f"The data spec pooled:{argument} has the option {item!r}; write {FORM}.")
        values[key.strip()] = value.strip()
    if "heldout" not in values or not base.strip():
        raise DataError(f"The data spec pooled:{argument} needs heldout=D and a base data spec after the options; write {FORM}.")
    if parse_spec(base)[0] == POOLED_KIND:
        raise DataError(f"The data spec pooled:{argument} pools a pooled set; give a plain labelled set as BASE: {FORM}.")
    try:
        return PooledSplit(heldout=int(values["heldout"]), seed=int(values.get("seed", "0")), base=base.strip())
    except ValueError as exc:  # int() or the model's bounds
        raise DataError(f"The data spec pooled:{argument} has a bad heldout or seed ({exc}); both are non-negative integers: "
                        f"{FORM}.") from exc


def pooled_spec(heldout: int, seed: int, base: str) -> str:
    """The data spec of the pooled protocol on `base`."""
    return f"{POOLED_KIND}:heldout={heldout},seed={seed}:{base}"


def pooled_of(spec: str) -> PooledSplit | None:
    """The PooledSplit a data spec names, or None for any other spec."""
    kind, argument = parse_spec(spec)
    return parse_pooled(argument) if kind == POOLED_KIND else None


def pooled_rows(labels: np.ndarray, protocol: PooledSplit, split: str) -> np.ndarray:
    """Rows (int64, ascending) of `split` in the pooled set with labels `[N]` (see the module docstring)."""
    normal = np.flatnonzero(labels != protocol.heldout).astype(np.int64)
    numerator, denominator = PooledSplit.train_fraction
    n_train = len(normal) * numerator // denominator
    order = np.random.RandomState(protocol.seed).permutation(len(normal))  # Zenati et al.: RandomState(seed).permutation
    if split == "train":
        return np.sort(normal[order[:n_train]])
    if split == "test":
        return np.sort(np.concatenate([normal[order[n_train:]], np.flatnonzero(labels == protocol.heldout)])).astype(np.int64)
    return np.arange(len(labels), dtype=np.int64)


def _check_labels(labels: np.ndarray, protocol: PooledSplit) -> None:
    if labels.size == 0 or (labels < 0).any():
        raise DataError(f"The pooled protocol needs a labelled data set, but {protocol.base} has "
                        f"{'no images' if labels.size == 0 else f'{int((labels < 0).sum())} unlabelled images'}. "
                        "Use a set whose every image has a class (IDX, CIFAR-10, a folder of class sub-folders, an npz with labels).")
    present = np.unique(labels)
    if protocol.heldout not in present or len(present) < 2:
        raise DataError(f"The pooled protocol on {protocol.base} holds out class {protocol.heldout}, but its classes are "
                        f"{', '.join(map(str, present.tolist()))}. Hold out one of them, with at least one other class left as normal.")


def pooled_split(argument: str, split: str, read_base: Callable[[str, str], RawSplit]) -> RawSplit:
    """The RawSplit of `split` of `pooled:ARGUMENT`; `read_base(spec, split)` reads the base set."""
    protocol = parse_pooled(argument)
    base = read_base(protocol.base, "all")
    try:
        _check_labels(base.labels, protocol)
    except DataError:
        base.close()
        raise
    rows = pooled_rows(base.labels, protocol, split)
    return RawSplit(labels=base.labels[rows], index=rows, decode=lambda selected: base.decode(rows[selected]),
                    class_names=base.class_names, close=base.close)


def _rows_sha256(rows: np.ndarray) -> str:
    return hashlib.sha256(rows.astype("<i8", copy=False).tobytes()).hexdigest()


def split_record(protocol: PooledSplit, pooled_labels: np.ndarray) -> SplitRecord:
    """Sizes, positive fraction and row hashes of the pooled split, from the pooled set's labels `[N]`."""
    train, test = pooled_rows(pooled_labels, protocol, "train"), pooled_rows(pooled_labels, protocol, "test")
    n_positive = int((pooled_labels[test] == protocol.heldout).sum())
    return SplitRecord(base=protocol.base, heldout=protocol.heldout, seed=protocol.seed, n_pooled=len(pooled_labels), n_train=len(train),
                       n_test=len(test), n_test_positive=n_positive, positive_fraction=n_positive / len(test),
                       train_rows_sha256=_rows_sha256(train), test_rows_sha256=_rows_sha256(test))
