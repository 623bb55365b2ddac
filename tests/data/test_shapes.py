"""builtin:shapes: determinism, splits, and images that show the factors they claim."""

from __future__ import annotations

import hashlib
import math

import numpy as np
import pytest

from hebmctl.data import DataError, ImageSet, load_split, parse_spec, shapes
from hebmctl.data.shapes import BACKGROUND_COLOURS, FACTOR_NAMES, FACTOR_SIZES, OBJECT_COLOURS

SPEC = "builtin:shapes"
# SHAPES_VERSION 1; a change here is a new data set: bump the version
FIRST_16_TRAIN_SHA256 = "a1da029e787cc4d80bc868abf69e835b0865277b60ee77cdbbbfb8cd8a882f81"


@pytest.fixture(scope="module")
def test_split() -> ImageSet:
    return load_split(SPEC, "test", limit=2000)


def _alpha(images: np.ndarray, factors: np.ndarray) -> np.ndarray:
    """Object coverage float ``[n, H, W]`` recovered from the pixels: the projection of
    (pixel - background colour) onto (object colour - background colour)."""
    bg = BACKGROUND_COLOURS[factors[:, 6]].astype(float)[:, None, None, :]
    obj = OBJECT_COLOURS[factors[:, 5]].astype(float)[:, None, None, :]
    direction = obj - bg
    return ((images - bg) * direction).sum(-1) / (direction**2).sum(-1)


def _one(**factors: int) -> np.ndarray:
    """A factor row int64 ``[1, 7]`` from keyword values (defaults: middle of the grid)."""
    row = dict(shape=0, scale=5, orientation=0, x=3, y=4, object_hue=0, background_hue=5) | factors
    return np.array([[row[name] for name in FACTOR_NAMES]], dtype=np.int64)


def test_specs_and_split_sizes() -> None:
    assert parse_spec(SPEC) == ("builtin", "shapes") and parse_spec("builtin:shapes-64") == ("builtin", "shapes-64")
    with pytest.raises(DataError, match="shapes-64"):
        parse_spec("builtin:shapes-128")
    raw = {split: shapes.shapes_split("shapes", split) for split in ("train", "test", "all")}
    assert [len(raw[s].labels) for s in ("train", "test", "all")] == [60_000, 10_000, 70_000]
    assert np.array_equal(np.concatenate([raw["train"].factors, raw["test"].factors]), raw["all"].factors)
    assert np.array_equal(raw["test"].index, np.arange(60_000, 70_000))
    flat = np.ravel_multi_index(raw["all"].factors.T, FACTOR_SIZES)
    assert len(np.unique(flat)) == 70_000  # distinct grid points: train and test are disjoint
    for k, size in enumerate(FACTOR_SIZES):  # every value of every factor occurs, roughly uniformly
        counts = np.bincount(raw["all"].factors[:, k], minlength=size)
        assert counts.min() > 0.9 * 70_000 / size


def test_first_images_are_pinned_and_rendering_is_deterministic() -> None:
    raw = shapes.shapes_split("shapes", "train")
    first = raw.decode(np.arange(16))
    assert first.shape == (16, 32, 32, 3) and first.dtype == np.uint8
    assert hashlib.sha256(first.tobytes()).hexdigest() == FIRST_16_TRAIN_SHA256
    again = shapes.render(shapes.sample_factors()[:16])
    assert np.array_equal(again, first)
    limited = load_split(SPEC, "train", limit=5)  # a seeded subset (issue 14): rendered from its own rows only
    assert np.array_equal(limited.images, shapes.render(shapes.sample_factors()[limited.index]))


def test_imageset_carries_factors_and_shape_labels(test_split: ImageSet) -> None:
    assert test_split.factors.shape == (2000, 7) and test_split.factors.dtype == np.int64
    assert test_split.factor_names == FACTOR_NAMES and test_split.factor_sizes == FACTOR_SIZES
    assert np.array_equal(test_split.labels, test_split.factors[:, 0])
    assert test_split.class_names == ("square", "ellipse", "triangle", "heart")
    assert load_split("builtin:mnist-10k", "test", limit=4).factors is None
    changed = ImageSet(test_split.images, test_split.labels, test_split.index, test_split.class_names, SPEC, "test",
                       test_split.factors[:, ::-1].copy(), test_split.factor_names, test_split.factor_sizes[::-1])
    assert changed.fingerprint() != test_split.fingerprint()  # factors are part of the content
    with pytest.raises(ValueError, match="factor values"):
        ImageSet(test_split.images, test_split.labels, test_split.index, (), SPEC, "test",
                 test_split.factors + 9, test_split.factor_names, test_split.factor_sizes)


def test_background_and_object_colours_match_the_hue_factors(test_split: ImageSet) -> None:
    images, factors = test_split.images, test_split.factors
    assert np.array_equal(images[:, 0, 0], BACKGROUND_COLOURS[factors[:, 6]])  # corners are never covered
    centres = shapes.centre_pixels(32)
    rows, cols = centres[factors[:, 4]].astype(int), centres[factors[:, 3]].astype(int)
    # The pixel right-below the centre lies fully inside every shape at every scale.
    assert np.array_equal(images[np.arange(len(images)), rows, cols], OBJECT_COLOURS[factors[:, 5]])


def test_object_centroid_is_the_position_factor(test_split: ImageSet) -> None:
    alpha = _alpha(test_split.images.astype(float), test_split.factors)
    grid = np.arange(32) + 0.5  # pixel centres
    mass = alpha.sum(axis=(1, 2))
    cx = (alpha * grid[None, None, :]).sum(axis=(1, 2)) / mass
    cy = (alpha * grid[None, :, None]).sum(axis=(1, 2)) / mass
    centres = shapes.centre_pixels(32)
    assert np.abs(cx - centres[test_split.factors[:, 3]]).max() < 0.25
    assert np.abs(cy - centres[test_split.factors[:, 4]]).max() < 0.25


@pytest.mark.parametrize("shape", range(4))
def test_scale_orders_the_object_area(shape: int) -> None:
    rows = np.concatenate([_one(shape=shape, scale=s, orientation=3) for s in range(6)])
    areas = _alpha(shapes.render(rows).astype(float), rows).sum(axis=(1, 2))
    assert np.all(np.diff(areas) > 0)
    radii = shapes.RADII
    expected = {0: 2.0, 1: math.pi / 2, 2: 3 * math.sqrt(3) / 4}.get(shape)  # area / circumradius^2
    if expected is not None:
        assert areas == pytest.approx(expected * radii**2, rel=0.01)


def test_orientation_turns_the_ellipse_counter_clockwise() -> None:
    rows = np.concatenate([_one(shape=1, orientation=o) for o in range(10)])
    alpha = _alpha(shapes.render(rows).astype(float), rows)
    centre = shapes.centre_pixels(32)[[3, 4]]
    u = np.arange(32) + 0.5 - centre[0]
    v = -(np.arange(32) + 0.5 - centre[1])  # image rows go down; angles are measured upwards
    uu, vv = np.meshgrid(u, v)
    for o, a in enumerate(alpha):
        cov_uu, cov_vv, cov_uv = (a * uu * uu).sum(), (a * vv * vv).sum(), (a * uu * vv).sum()
        angle = 0.5 * math.degrees(math.atan2(2 * cov_uv, cov_uu - cov_vv))  # major axis direction
        assert angle == pytest.approx(9.0 * o, abs=1.5)


def test_every_shape_scale_orientation_draws_a_different_mask() -> None:
    table = shapes.masks(32).reshape(240, -1)
    diffs = np.abs(table[:, None, :] - table[None, :, :]).sum(-1)
    np.fill_diagonal(diffs, np.inf)
    assert diffs.min() > 0.5  # at least half a pixel of coverage differs


def test_shapes_64_is_the_same_data_at_twice_the_resolution() -> None:
    small, large = load_split(SPEC, "test", limit=8), load_split("builtin:shapes-64", "test", limit=8)
    assert large.images.shape == (8, 64, 64, 3) and np.array_equal(large.factors, small.factors)
    pooled = large.images.astype(float).reshape(8, 32, 2, 32, 2, 3).mean(axis=(2, 4))
    assert np.abs(pooled - small.images).mean() < 3  # same picture, up to anti-aliasing
