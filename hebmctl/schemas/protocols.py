"""Typed forms of the anomaly split protocols (DESIGN §6): the pooled 80/20 split and its record.

`pooled:heldout=D,seed=S:BASE` is a data spec (parsed in `hebmctl.data.protocols`) whose "train"
and "test" splits are the anchors' protocol (Zenati et al. 2018, used by LEBM, Joint-EBM,
Hier-EBM) on the labelled data set BASE: pool every image of BASE (train then test), shuffle the
images of the normal classes (all but D) with seed S, train on the first 80 %, test on the other
20 % plus every image of class D.
"""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field

from hebmctl.schemas.common import StrictModel

POOLED_KIND = "pooled"
"""The data-spec kind of the pooled protocol: `pooled:heldout=D,seed=S:BASE`."""


class PooledSplit(StrictModel):
    """The pooled 80/20 anomaly protocol on a labelled data set."""

    protocol: ClassVar[str] = "pooled-80-20"
    train_fraction: ClassVar[tuple[int, int]] = (4, 5)  # train = floor(4/5 * normal images), as Zenati's int(0.8 * n)

    heldout: int = Field(ge=0, description="The held-out (anomalous) class id: none of its images is in 'train', all are in 'test'.")
    seed: int = Field(0, ge=0, lt=2**32, description="Seed of the shuffle of the normal classes' images (numpy RandomState).")
    base: str = Field(description="Data spec of the labelled set that is pooled (its 'all' split: train then test).")


class SplitRecord(StrictModel):
    """What a manifest records about a pooled split: enough to recognise it and to check its sizes."""

    protocol: Literal["pooled-80-20"] = Field("pooled-80-20", description="Protocol name.")
    base: str = Field(description="Data spec of the pooled set.")
    heldout: int = Field(description="Held-out (positive) class id.")
    seed: int = Field(description="Seed of the shuffle.")
    n_pooled: int = Field(description="Images in the pooled set.")
    n_train: int = Field(description="Images in 'train' (80 % of the normal classes, rounded down).")
    n_test: int = Field(description="Images in 'test' (the other normal images plus every held-out image).")
    n_test_positive: int = Field(description="Held-out images in 'test' (all of them).")
    positive_fraction: float = Field(description="n_test_positive / n_test: the AUPRC of a random score.")
    train_rows_sha256: str = Field(description="sha256 of the train rows (positions in the pooled set, little-endian int64, ascending).")
    test_rows_sha256: str = Field(description="sha256 of the test rows (as for train).")
