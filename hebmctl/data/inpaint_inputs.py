"""The inputs of `sample --inpaint IMAGE --mask MASK`: the images to complete and the region to fill.

IMAGE: a PNG (one image) or an `.npz` with key `images` (uint8 `[N, H, W]` or `[N, H, W, C]`, as the npz
data spec). MASK: a PNG of the image's size (white, > 127, = to fill; any mode, read as gray) or a named mask
(`NAMED_MASKS`). Everything is checked against the backbone's image shape here, before any compute.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hebmctl.data.images import decode_image
from hebmctl.data.npz import npz_images
from hebmctl.errors import ConfigError, DataError


def _center(h: int, w: int) -> np.ndarray:
    mask = np.zeros((h, w), dtype=bool)
    mask[h // 4 : h - h // 4, w // 4 : w - w // 4] = True  # the central square of half the side (28x28: rows/cols 7..20)
    return mask


def _half(axis: int, first: bool) -> Callable[[int, int], np.ndarray]:
    def make(h: int, w: int) -> np.ndarray:
        mask = np.zeros((h, w), dtype=bool)
        size = (h, w)[axis] // 2
        cut = slice(0, size) if first else slice(size, None)
        mask[(cut, slice(None)) if axis == 0 else (slice(None), cut)] = True
        return mask

    return make


NAMED_MASKS: dict[str, Callable[[int, int], np.ndarray]] = {
    "center": _center,
    "left-half": _half(1, True),
    "right-half": _half(1, False),
    "top-half": _half(0, True),
    "bottom-half": _half(0, False),
}
"""Name -> (H, W) -> bool mask `[H, W]` (True = to fill)."""


@dataclass(frozen=True)
class InpaintInputs:
    """images uint8 `[N, H, W, C]`; mask bool `[H, W]` (True = to fill); the sha256 of the image file's bytes and of the
    mask (the PNG's bytes, or of the mask array's bytes for a named mask); `mask_name` for a named mask, else None."""

    images: np.ndarray
    mask: np.ndarray
    image_sha256: str
    mask_sha256: str
    mask_name: str | None


def read_inpaint_inputs(image: Path, mask: str, image_shape: tuple[int, int, int]) -> InpaintInputs:
    """Read and check IMAGE and MASK against the backbone's image shape (H, W, C); DataError / ConfigError otherwise."""
    images, image_sha = _read_images(Path(image))
    height, width, channels = image_shape
    if images.shape[1:] != (height, width, channels):
        n, h, w, c = images.shape
        raise ConfigError(f"--inpaint {image}: the image is {w}x{h} with {c} channel(s), but the backbone takes {width}x{height} "
                          f"with {channels} channel(s). Resize or convert the image (gray = 1 channel, RGB = 3).")
    pixel_mask, mask_sha, name = _read_mask(mask, height, width)
    filled = int(pixel_mask.sum())
    if filled == 0 or filled == pixel_mask.size:
        what = "no pixel" if filled == 0 else "every pixel"
        raise ConfigError(f"--mask {mask} marks {what} to fill: nothing would be inpainted"
                          f"{'' if filled == 0 else ' (no visible pixel is left to condition on)'}. White (> 127) marks the pixels "
                          f"to fill; use a mask with both, or a named mask: {', '.join(NAMED_MASKS)}.")
    return InpaintInputs(images, pixel_mask, image_sha, mask_sha, name)


def _read_bytes(path: Path, option: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise DataError(f"{option} {path}: cannot read the file ({exc.strerror or exc}). Check the path.") from exc


def _read_images(path: Path) -> tuple[np.ndarray, str]:
    """uint8 `[N, H, W, C]` and the file's sha256."""
    data = _read_bytes(path, "--inpaint")
    digest = hashlib.sha256(data).hexdigest()
    if path.suffix.lower() == ".npz":
        return npz_images(path), digest
    return decode_image(data, str(path))[np.newaxis], digest


def _read_mask(mask: str, height: int, width: int) -> tuple[np.ndarray, str, str | None]:
    """bool `[H, W]` (True = to fill), its sha256 and its name (None for a PNG)."""
    if mask in NAMED_MASKS:
        pixels = NAMED_MASKS[mask](height, width)
        return pixels, hashlib.sha256(np.packbits(pixels).tobytes()).hexdigest(), mask
    path = Path(mask)
    if not path.exists() and not path.suffix:
        raise ConfigError(f"--mask {mask}: neither a named mask ({', '.join(NAMED_MASKS)}) nor an existing PNG file.")
    data = _read_bytes(path, "--mask")
    gray = decode_image(data, str(path))
    if gray.shape[-1] == 3:
        gray = gray.mean(axis=-1, keepdims=True)
    if gray.shape[:2] != (height, width):
        raise ConfigError(f"--mask {mask}: the mask is {gray.shape[1]}x{gray.shape[0]}, the images {width}x{height}. "
                          "The mask must have the images' size (white = to fill).")
    return gray[..., 0] > 127, hashlib.sha256(data).hexdigest(), None
