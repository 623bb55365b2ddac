"""Image grids and image folders as PNG (Pillow), written atomically."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from hebmctl.io.atomic import atomic_path


def make_grid(images: np.ndarray, n_cols: int, pad: int = 2, pad_value: int = 255) -> np.ndarray:
    """uint8 `[N, H, W, C]` -> one uint8 image `[rows*(H+pad)+pad, n_cols*(W+pad)+pad, C]`."""
    n, h, w, c = images.shape
    n_rows = max(1, -(-n // n_cols))
    grid = np.full((n_rows * (h + pad) + pad, n_cols * (w + pad) + pad, c), pad_value, dtype=np.uint8)
    for k in range(n):
        r, col = divmod(k, n_cols)
        top, left = pad + r * (h + pad), pad + col * (w + pad)
        grid[top : top + h, left : left + w] = images[k]
    return grid


def save_png(path: Path, image: np.ndarray, scale: int = 1) -> None:
    """Write uint8 `[H, W, C]` (C = 1 or 3) as PNG, optionally upscaled by an integer factor (nearest)."""
    if scale > 1:
        image = image.repeat(scale, axis=0).repeat(scale, axis=1)
    pil = Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image)
    with atomic_path(Path(path)) as tmp:
        pil.save(tmp, format="PNG")


def save_grid(path: Path, images: np.ndarray, n_cols: int, scale: int = 2) -> None:
    """uint8 `[N, H, W, C]` -> a grid PNG at `path`."""
    save_png(path, make_grid(images, n_cols), scale=scale)
