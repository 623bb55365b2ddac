"""``builtin:shapes`` / ``builtin:shapes-64``: procedural shapes with known generative factors.

A data set in the spirit of dSprites and 3DShapes, for disentanglement metrics (issue 15). Every
image shows one filled shape on a plain background, drawn from seven discrete factors:

=================  ====  =================================================================
factor             size  values
=================  ====  =================================================================
shape                 4  square, ellipse (axes 1 : 0.5), equilateral triangle, heart
scale                 6  circumradius 3.5 .. 7.0 px (32x32; x2 at 64x64), linear
orientation          10  0, 9, ..., 81 degrees counter-clockwise (every shape is distinct
                         over [0, 90): the square repeats at 90, the triangle at 120)
x                     8  centre column 9, 11, ..., 23 px (32x32; x2 at 64x64), left to right
y                     8  centre row 9, 11, ..., 23 px, top to bottom
object_hue           10  hue k / 10, saturation 0.85, value 1.0 (bright)
background_hue       10  hue k / 10, saturation 0.55, value 0.45 (dark): an object on a
                         background of its own hue stays visible by brightness
=================  ====  =================================================================

The full grid has 1,536,000 combinations. A fixed seed (``SEED``) draws 70,000 distinct ones
without replacement: "train" = the first 60,000, "test" = the last 10,000 (disjoint), "all" =
train then test; ``index`` is the row in that order. Positions are in continuous pixel
coordinates (pixel (i, j) covers ``[j, j+1) x [i, i+1)``), so the centre (x, y) = (16, 16) is
the image centre; each shape is defined around its area centroid, which is therefore the
(x, y) position. Labels (the class of the existing stages) are the shape factor.

Rendering: each (shape, scale, orientation) is rasterised once into a coverage mask by 8x8
supersampling (anti-aliasing; coverage is a multiple of 1/64), then pasted at its integer
position and blended ``bg + alpha * (object - bg)``, rounded to uint8. Nothing is cached on disk:
the split's factors are drawn in ~0.1 s, and only the rows asked for are rendered (all 70,000
at 32x32 take ~1-2 s on one core, see README). ``SHAPES_VERSION`` names this exact data set;
any change to the drawing or the sampling must bump it (a test pins the first images' hash).
"""

from __future__ import annotations

import colorsys
import math
from functools import lru_cache

import numpy as np

from hebmctl.data.raw import RawSplit

SHAPES_VERSION = 1
SEED = 15
SHAPE_NAMES: tuple[str, ...] = ("square", "ellipse", "triangle", "heart")
FACTOR_NAMES: tuple[str, ...] = ("shape", "scale", "orientation", "x", "y", "object_hue", "background_hue")
FACTOR_SIZES: tuple[int, ...] = (4, 6, 10, 8, 8, 10, 10)
TRAIN_SIZE, TEST_SIZE = 60_000, 10_000
RESOLUTIONS: dict[str, int] = {"shapes": 32, "shapes-64": 64}
"""Built-in set name -> image side in pixels; geometry scales with side / 32, factors are shared."""

BASE_SIDE = 32
RADII = np.linspace(3.5, 7.0, FACTOR_SIZES[1])  # circumradius per scale value, px at 32x32
POSITIONS = 16.0 + 2.0 * (np.arange(FACTOR_SIZES[3]) - 3.5)  # 9, 11, ..., 23 px at 32x32
ANGLES = np.deg2rad(9.0 * np.arange(FACTOR_SIZES[2]))
SUPERSAMPLE = 8
HEART_CENTROID_Y, HEART_RADIUS = 0.29348, 1.29061  # of (x^2 + y^2 - 1)^3 <= x^2 y^3, measured numerically


def _square(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    half = 1 / math.sqrt(2)
    return (np.abs(x) <= half) & (np.abs(y) <= half)


def _ellipse(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    return x * x + (y / 0.5) ** 2 <= 1


def _triangle(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Equilateral, pointing up, circumradius 1 (inradius 0.5) around its centroid."""
    inside = np.ones(x.shape, dtype=bool)
    for angle in (-math.pi / 2, math.pi / 6, 5 * math.pi / 6):  # outward edge normals
        inside &= x * math.cos(angle) + y * math.sin(angle) <= 0.5
    return inside


def _heart(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """The implicit heart, moved to its area centroid and scaled to circumradius 1."""
    hx, hy = x * HEART_RADIUS, y * HEART_RADIUS + HEART_CENTROID_Y
    return (hx * hx + hy * hy - 1) ** 3 - hx * hx * hy**3 <= 0


_SHAPES = (_square, _ellipse, _triangle, _heart)


def canvas_side(side: int) -> int:
    """Side of the square mask canvas: the largest shape plus a margin, centred on a pixel corner."""
    return 2 * math.ceil(RADII[-1] * side / BASE_SIDE + 1)


def _mask(shape: int, radius: float, angle: float, canvas: int) -> np.ndarray:
    """Coverage float32 ``[canvas, canvas]`` in [0, 1] of one shape centred at (canvas/2, canvas/2)."""
    steps = (np.arange(canvas * SUPERSAMPLE) + 0.5) / SUPERSAMPLE - canvas / 2
    u, v = np.meshgrid(steps, -steps)  # image columns -> x, image rows -> y upwards
    cos, sin = math.cos(angle), math.sin(angle)
    x, y = (cos * u + sin * v) / radius, (-sin * u + cos * v) / radius  # rotate by -angle: shape turns by +angle
    inside = _SHAPES[shape](x, y).reshape(canvas, SUPERSAMPLE, canvas, SUPERSAMPLE)
    return inside.mean(axis=(1, 3), dtype=np.float32)


@lru_cache(maxsize=2)
def masks(side: int) -> np.ndarray:
    """Coverage masks float32 ``[shapes * scales * orientations, C, C]``, row = (shape, scale, orientation)."""
    canvas = canvas_side(side)
    radii = RADII * side / BASE_SIDE
    out = [_mask(s, r, a, canvas) for s in range(FACTOR_SIZES[0]) for r in radii for a in ANGLES]
    return np.stack(out)


def palette(saturation: float, value: float) -> np.ndarray:
    """uint8 ``[10, 3]`` RGB colours of hues k / 10 at the given saturation and value."""
    hues = [colorsys.hsv_to_rgb(k / FACTOR_SIZES[5], saturation, value) for k in range(FACTOR_SIZES[5])]
    return np.rint(np.array(hues) * 255).astype(np.uint8)


OBJECT_COLOURS = palette(0.85, 1.0)
BACKGROUND_COLOURS = palette(0.55, 0.45)


def centre_pixels(side: int) -> np.ndarray:
    """Centre coordinate (float, continuous pixels) of each x / y position value at this side."""
    return POSITIONS * side / BASE_SIDE


@lru_cache(maxsize=1)
def sample_factors() -> np.ndarray:
    """int64 ``[TRAIN_SIZE + TEST_SIZE, 7]``: distinct grid points drawn with ``SEED`` (train rows first)."""
    rng = np.random.default_rng(SEED)
    flat = rng.choice(math.prod(FACTOR_SIZES), TRAIN_SIZE + TEST_SIZE, replace=False)
    factors = np.stack(np.unravel_index(flat, FACTOR_SIZES), axis=1).astype(np.int64)
    factors.setflags(write=False)
    return factors


def render(factors: np.ndarray, side: int = BASE_SIDE, chunk: int = 4096) -> np.ndarray:
    """Draw the images of factor rows int64 ``[n, 7]`` -> uint8 ``[n, side, side, 3]``."""
    out = np.empty((len(factors), side, side, 3), dtype=np.uint8)
    for start in range(0, len(factors), chunk):
        out[start : start + chunk] = _render_chunk(factors[start : start + chunk], side)
    return out


def _render_chunk(factors: np.ndarray, side: int) -> np.ndarray:
    """uint8 ``[n, side, side, 3]`` of factor rows ``[n, 7]``: coverage masks pasted and blended."""
    table, canvas = masks(side), canvas_side(side)
    mask_rows = (factors[:, 0] * FACTOR_SIZES[1] + factors[:, 1]) * FACTOR_SIZES[2] + factors[:, 2]
    corners = np.rint(centre_pixels(side) - canvas / 2).astype(np.int64)  # centres are integers
    alpha = np.zeros((len(factors), side, side), dtype=np.float32)
    for x in range(FACTOR_SIZES[3]):
        for y in range(FACTOR_SIZES[4]):
            rows = np.flatnonzero((factors[:, 3] == x) & (factors[:, 4] == y))
            top, left = corners[y], corners[x]
            alpha[rows, top : top + canvas, left : left + canvas] = table[mask_rows[rows]]
    background = BACKGROUND_COLOURS[factors[:, 6]].astype(np.float32)[:, None, None, :]
    colour = OBJECT_COLOURS[factors[:, 5]].astype(np.float32)[:, None, None, :]
    return np.rint(background + alpha[..., None] * (colour - background)).astype(np.uint8)


def shapes_split(name: str, split: str) -> RawSplit:
    """The RawSplit of ``builtin:<name>`` (``shapes`` or ``shapes-64``); only decoded rows are rendered."""
    side, factors = RESOLUTIONS[name], sample_factors()
    positions = np.arange(len(factors), dtype=np.int64)
    if split != "all":
        positions = positions[TRAIN_SIZE:] if split == "test" else positions[:TRAIN_SIZE]
    chosen = factors[positions]
    return RawSplit(
        labels=chosen[:, 0].copy(),
        index=positions,
        decode=lambda rows: render(chosen[rows], side),
        class_names=SHAPE_NAMES,
        factors=chosen,
        factor_names=FACTOR_NAMES,
        factor_sizes=FACTOR_SIZES,
    )
