"""Tests of hebmctl.data: real data sets from ../shared/data plus small files built in tmp_path."""

from __future__ import annotations

import dataclasses
import gzip
import os
import pickle
import shutil
import struct
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from hebmctl.data import DataError, ImageSet, from_unit_range, load_split, parse_spec, to_unit_range
from hebmctl.data.cifar import restricted_load
from hebmctl.data.subsets import subset_positions

from tests.conftest import shared_data

BUILTIN = "builtin:mnist-10k"
CIFAR_ORDER = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


@pytest.fixture(scope="module")
def shared() -> Path:
    return shared_data()


@pytest.fixture(scope="module")
def mnist_train(shared: Path) -> ImageSet:
    return load_split(f"mnist:{shared / 'mnist'}", "train")


@pytest.fixture(scope="module")
def builtin_all() -> ImageSet:
    return load_split(BUILTIN, "all")


def _data_error(match: str):
    """pytest.raises(DataError) whose message contains ``match`` (case-insensitive, one paragraph)."""
    return pytest.raises(DataError, match=f"(?i){match}")


def _one_paragraph(info: pytest.ExceptionInfo) -> None:
    assert "\n" not in str(info.value)


# --- builtin ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("split", "size", "first", "last"), [("train", 9000, 0, 8999), ("test", 1000, 9000, 9999), ("all", 10000, 0,
                                                                                                                     9999)])
def test_builtin_splits(split: str, size: int, first: int, last: int) -> None:
    data = load_split(BUILTIN, split)
    assert len(data) == size and data.images.shape == (size, 28, 28, 1)
    assert data.images.dtype == np.uint8 and data.images.flags.c_contiguous
    assert data.labels.dtype == np.int64 and data.index.dtype == np.int64
    assert set(np.unique(data.labels).tolist()) == set(range(10))
    assert np.array_equal(data.index, np.arange(first, last + 1))
    assert data.image_shape == (28, 28, 1) and data.num_channels == 1
    assert data.class_names == tuple("0123456789") and data.spec == BUILTIN and data.split == split
    assert data.images.max() == 255 and data.images.min() == 0


def test_builtin_train_and_test_partition_all(builtin_all: ImageSet) -> None:
    train, test = load_split(BUILTIN, "train"), load_split(BUILTIN, "test")
    assert np.array_equal(np.concatenate([train.images, test.images]), builtin_all.images)
    assert builtin_all.labels[0] == 7  # first label of the MNIST test split


def test_builtin_equals_shared_mnist_test(shared: Path, builtin_all: ImageSet) -> None:
    test = load_split(f"mnist:{shared / 'mnist'}", "test")
    assert builtin_all.fingerprint() == test.fingerprint()


# --- MNIST / Fashion-MNIST ------------------------------------------------------------------------


def test_mnist_sizes_and_labels(shared: Path, mnist_train: ImageSet) -> None:
    test = load_split(f"mnist:{shared / 'mnist'}", "test")
    assert (len(mnist_train), len(test)) == (60000, 10000)
    assert mnist_train.images.shape == (60000, 28, 28, 1) and mnist_train.labels[0] == 5
    assert np.array_equal(mnist_train.index, np.arange(60000))
    assert np.bincount(mnist_train.labels).tolist()[1] == 6742  # digit 1 count in MNIST train


def test_mnist_all_is_train_then_test(shared: Path, mnist_train: ImageSet) -> None:
    both = load_split(f"mnist:{shared / 'mnist'}", "all")
    assert np.array_equal(both.images[:60000], mnist_train.images)
    assert both.labels[60000] == 7 and np.array_equal(both.index, np.arange(70000))


def test_fashion_mnist(shared: Path) -> None:
    spec = f"fashion-mnist:{shared / 'fashion-mnist'}"
    train, test = load_split(spec, "train"), load_split(spec, "test")
    assert (len(train), len(test)) == (60000, 10000)
    assert train.labels[0] == 9 and train.class_names[9] == "Ankle boot" and train.class_names[0] == "T-shirt/top"
    assert np.bincount(test.labels).tolist() == [1000] * 10


def test_uncompressed_idx_files_are_accepted(tmp_path: Path) -> None:
    builtin_dir = Path(__file__).resolve().parents[2] / "hebmctl" / "data" / "builtin"
    for name in ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        (tmp_path / name).write_bytes(gzip.decompress((builtin_dir / f"{name}.gz").read_bytes()))
    data = load_split(f"mnist:{tmp_path}", "test")
    assert data.labels[:3].tolist() == [7, 2, 1]


# --- exclude_classes and limit -------------------------------------------------------------------


def test_exclude_and_limit_keep_original_index(builtin_all: ImageSet) -> None:
    data = load_split(BUILTIN, "all", exclude_classes=[1, 7], limit=100)
    assert len(data) == 100 and not np.isin(data.labels, [1, 7]).any()
    assert np.all(np.diff(data.index) > 0)
    assert np.array_equal(data.images, builtin_all.images[data.index])
    assert np.array_equal(data.labels, builtin_all.labels[data.index])
    kept = np.flatnonzero(~np.isin(builtin_all.labels, [1, 7]))
    expected = kept[subset_positions(builtin_all.labels[kept], 100)]  # a seeded stratified subset, not the first 100
    assert np.array_equal(data.index, expected)


def test_test_split_index_after_exclusion() -> None:
    data = load_split(BUILTIN, "test", exclude_classes=[0])
    assert data.index.min() >= 9000 and 0 not in data.labels.tolist()


def test_unknown_excluded_class_and_bad_limit() -> None:
    with _data_error("Cannot exclude class 11") as info:
        load_split(BUILTIN, "test", exclude_classes=[11])
    _one_paragraph(info)
    with _data_error("positive"):
        load_split(BUILTIN, "test", limit=0)


# --- CIFAR-10 ---------------------------------------------------------------------------------------


def test_cifar10_zip_with_limit(shared: Path) -> None:
    spec = f"cifar10:{shared / 'cifar10-jpg.zip'}"
    data = load_split(spec, "test", limit=25)
    assert data.images.shape == (25, 32, 32, 3) and data.images.dtype == np.uint8
    assert data.class_names == CIFAR_ORDER and np.array_equal(data.labels, data.index // 1000)  # listed by class, 1,000 each
    assert sorted(np.bincount(data.labels, minlength=10).tolist()) == [2] * 5 + [3] * 5  # every class, not 25 airplanes
    not_planes = load_split(spec, "test", exclude_classes=[0], limit=5)
    assert len(set(not_planes.labels.tolist()) - {0}) == 5 and np.array_equal(not_planes.labels, not_planes.index // 1000)


def _py2_str(raw: bytes) -> bytes:
    return (b"U" + bytes([len(raw)]) + raw) if len(raw) < 256 else (b"T" + struct.pack("<i", len(raw)) + raw)


def _py2_int(value: int) -> bytes:
    return b"J" + struct.pack("<i", value)


def _py2_array(array: np.ndarray) -> bytes:
    """A uint8 array pickled as Python 2 numpy did (protocol 2, numpy.core.multiarray._reconstruct)."""
    dtype = b"cnumpy\ndtype\n" + _py2_str(b"u1") + _py2_int(0) + _py2_int(1) + b"\x87R(" + _py2_int(3)
    dtype += _py2_str(b"|") + b"NNN" + _py2_int(-1) + _py2_int(-1) + _py2_int(0) + b"tb"
    shape = b"(" + b"".join(_py2_int(d) for d in array.shape) + b"t"
    head = b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\n" + _py2_int(0) + b"\x85" + _py2_str(b"b") + b"\x87R("
    return head + _py2_int(1) + shape + dtype + b"\x89" + _py2_str(array.tobytes()) + b"tb"


def _py2_batch(data: np.ndarray, labels: list[int]) -> bytes:
    """A CIFAR-10 batch as the original Python 2 pickles store it (byte-string keys)."""
    items = _py2_str(b"data") + _py2_array(data) + _py2_str(b"labels") + b"](" + b"".join(map(_py2_int, labels)) + b"e"
    return b"\x80\x02}(" + items + _py2_str(b"batch_label") + _py2_str(b"batch") + b"u."


def _fake_cifar(root: Path) -> Path:
    """cifar-10-batches-py with 5 train batches of 3 images and a test batch of 2 (Python 3 pickles)."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for k, name in enumerate([f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]):
        count = 2 if name == "test_batch" else 3
        batch = {b"data": rng.integers(0, 256, (count, 3072), dtype=np.uint8), b"labels": [k, k + 1, 9][:count]}
        (folder / name).write_bytes(pickle.dumps(batch, protocol=4))
    meta = {b"label_names": [name.encode() for name in CIFAR_ORDER], b"num_vis": 3072}
    (folder / "batches.meta").write_bytes(pickle.dumps(meta, protocol=4))
    return folder


def test_cifar10_python_batches(tmp_path: Path) -> None:
    folder = _fake_cifar(tmp_path)
    train = load_split(f"cifar10:{folder}", "train")
    assert train.images.shape == (15, 32, 32, 3) and train.labels.tolist()[:4] == [0, 1, 9, 1]
    assert train.class_names == CIFAR_ORDER
    everything = load_split(f"cifar10:{tmp_path}", "all")  # the parent folder works too
    assert len(everything) == 17 and everything.index.tolist() == list(range(17))
    raw = pickle.loads((folder / "test_batch").read_bytes())[b"data"]
    test = load_split(f"cifar10:{folder}", "test")
    assert test.images[1, 0, 0].tolist() == [raw[1, 0], raw[1, 1024], raw[1, 2048]]  # R, G, B planes


def test_cifar10_python2_pickle(tmp_path: Path) -> None:
    folder = _fake_cifar(tmp_path)
    data = np.arange(2 * 3072, dtype=np.int64).astype(np.uint8).reshape(2, 3072)
    (folder / "test_batch").write_bytes(_py2_batch(data, [3, 4]))
    test = load_split(f"cifar10:{folder}", "test")
    assert test.labels.tolist() == [3, 4]
    assert np.array_equal(test.images, data.reshape(2, 3, 32, 32).transpose(0, 2, 3, 1))


class _Evil:
    def __init__(self, flag: Path) -> None:
        self.flag = flag

    def __reduce__(self):
        return (os.system, (f"touch {self.flag}",))


def test_restricted_unpickler_refuses_code(tmp_path: Path) -> None:
    folder = _fake_cifar(tmp_path)
    flag = tmp_path / "pwned"
    (folder / "test_batch").write_bytes(pickle.dumps({b"data": _Evil(flag), b"labels": []}))
    with _data_error("is not allowed") as info:
        load_split(f"cifar10:{folder}", "test")
    _one_paragraph(info)
    assert not flag.exists()
    with pytest.raises(pickle.UnpicklingError):
        restricted_load(pickle.dumps(shutil.rmtree))


def test_cifar10_errors(tmp_path: Path) -> None:
    folder = _fake_cifar(tmp_path)
    (folder / "data_batch_3").unlink()
    with _data_error("data_batch_3 is missing"):
        load_split(f"cifar10:{folder}", "train")
    (folder / "test_batch").write_bytes(pickle.dumps({b"data": np.zeros((2, 10), np.uint8), b"labels": [0, 1]}))
    with _data_error(r"uint8 \[N, 3072\]"):
        load_split(f"cifar10:{folder}", "test")
    _write_pngs(tmp_path / "flat", {"a/0.png": (4, 4, "L")})
    with _data_error("no train/ and test/"):
        load_split(f"cifar10:{tmp_path / 'flat'}", "train")


# --- image folders and zips ---------------------------------------------------------------------------


def _write_pngs(root: Path, files: dict[str, tuple[int, int, str]], seed: int = 0) -> None:
    """Write PNGs ``{relative path: (width, height, mode)}`` with random pixels."""
    rng = np.random.default_rng(seed)
    for relative, (width, height, mode) in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        shape = (height, width) if mode == "L" else (height, width, 3)
        Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)).convert(mode).save(path)


def _zip_folder(folder: Path, target: Path, wrapper: str = "") -> Path:
    with zipfile.ZipFile(target, "w") as archive:
        for path in sorted(folder.rglob("*")):
            archive.write(path, wrapper + path.relative_to(folder).as_posix())
    return target


def _flat_layout(root: Path) -> None:
    files = {f"cat/{i:02d}.png": (6, 5, "L") for i in range(12)}
    files |= {f"dog/{i:02d}.png": (6, 5, "L") for i in range(12)}
    files["zz_unlabeled.png"] = (6, 5, "L")
    (root / "notes.txt").parent.mkdir(parents=True, exist_ok=True)
    (root / "notes.txt").write_text("not an image")
    _write_pngs(root, files)


def test_folder_without_splits(tmp_path: Path) -> None:
    _flat_layout(tmp_path / "flat")
    spec = f"folder:{tmp_path / 'flat'}"
    everything, train, test = (load_split(spec, s) for s in ("all", "train", "test"))
    assert everything.images.shape == (25, 5, 6, 1) and everything.class_names == ("cat", "dog")
    assert everything.labels.tolist() == [0] * 12 + [1] * 12 + [-1]
    assert test.index.tolist() == [9, 19] and len(train) == 23
    assert np.array_equal(test.images, everything.images[[9, 19]])
    assert 9 not in train.index.tolist() and train.index[-1] == 24


def test_zip_matches_folder(tmp_path: Path) -> None:
    _flat_layout(tmp_path / "flat")
    archive = _zip_folder(tmp_path / "flat", tmp_path / "flat.zip")
    from_folder = load_split(f"folder:{tmp_path / 'flat'}", "train")
    from_zip = load_split(f"folder:{archive}", "train")
    assert from_zip.fingerprint() == from_folder.fingerprint()


def test_folder_with_split_folders_and_wrapper_zip(tmp_path: Path) -> None:
    files = {f"train/{c}/{i}.png": (4, 3, "RGB") for c in ("a", "b") for i in range(3)}
    files |= {"test/a/0.png": (4, 3, "RGB"), "test/c/0.png": (4, 3, "RGB")}
    _write_pngs(tmp_path / "split", files)
    test = load_split(f"folder:{tmp_path / 'split'}", "test")
    assert test.class_names == ("a", "b", "c") and test.labels.tolist() == [0, 2]
    assert test.images.shape == (2, 3, 4, 3) and test.index.tolist() == [0, 1]
    archive = _zip_folder(tmp_path / "split", tmp_path / "wrapped.zip", wrapper="dataset/")
    everything = load_split(f"cifar10:{archive}", "all")
    assert everything.labels.tolist() == [0, 0, 0, 1, 1, 1, 0, 2] and everything.index.tolist() == list(range(8))


def test_folder_modes(tmp_path: Path) -> None:
    _write_pngs(tmp_path / "pal", {"x/0.png": (4, 4, "P"), "x/1.png": (4, 4, "RGB")})
    assert load_split(f"folder:{tmp_path / 'pal'}", "all").images.shape == (2, 4, 4, 3)
    _write_pngs(tmp_path / "mixed", {"x/0.png": (4, 4, "L"), "x/1.png": (4, 4, "RGB")})
    with _data_error("1.png is 4x4 RGB but .*0.png is 4x4 gray") as info:
        load_split(f"folder:{tmp_path / 'mixed'}", "all")
    _one_paragraph(info)
    _write_pngs(tmp_path / "sizes", {"x/0.png": (4, 4, "L"), "x/1.png": (5, 4, "L")})
    with _data_error("1.png is 5x4 gray .*same size and mode"):
        load_split(f"folder:{tmp_path / 'sizes'}", "all")


def test_limit_does_not_decode_the_rest(tmp_path: Path) -> None:
    _write_pngs(tmp_path / "bad", {f"x/{i}.png": (4, 4, "L") for i in range(5)})
    (left_out,) = set(range(5)) - set(subset_positions(np.zeros(5, np.int64), 4).tolist())
    (tmp_path / "bad" / "x" / f"{left_out}.png").write_bytes(b"\x89PNG broken")
    assert len(load_split(f"folder:{tmp_path / 'bad'}", "all", limit=4)) == 4
    with _data_error(f"Cannot decode the image .*{left_out}.png"):
        load_split(f"folder:{tmp_path / 'bad'}", "all")


def test_folder_errors(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with _data_error("contains no image files"):
        load_split(f"folder:{tmp_path / 'empty'}", "all")
    (tmp_path / "junk.zip").write_bytes(b"PK\x03\x04 not really a zip")
    with _data_error("neither a folder nor a zip"):
        load_split(f"folder:{tmp_path / 'junk.zip'}", "all")
    _write_pngs(tmp_path / "few", {f"x/{i}.png": (4, 4, "L") for i in range(5)})
    with _data_error("is empty"):
        load_split(f"folder:{tmp_path / 'few'}", "test")


# --- npz -------------------------------------------------------------------------------------------------


def test_npz_gray_and_rgb(tmp_path: Path) -> None:
    gray = np.random.default_rng(1).integers(0, 256, (30, 7, 5), dtype=np.uint8)
    np.savez(tmp_path / "gray.npz", images=gray, labels=np.arange(30) % 3)
    test = load_split(f"npz:{tmp_path / 'gray.npz'}", "test")
    assert test.images.shape == (3, 7, 5, 1) and test.index.tolist() == [9, 19, 29]
    assert np.array_equal(test.images[..., 0], gray[[9, 19, 29]]) and test.labels.tolist() == [0, 1, 2]
    rgb = np.zeros((4, 2, 2, 3), dtype=np.uint8)
    np.savez_compressed(tmp_path / "rgb.npz", images=rgb)
    data = load_split(f"npz:{tmp_path / 'rgb.npz'}", "train")
    assert data.images.shape == (4, 2, 2, 3) and data.labels.tolist() == [-1] * 4 and data.class_names == ()


@pytest.mark.parametrize(
    ("arrays", "phrase"),
    [
        ({"images": np.zeros((3, 4, 4), np.float32)}, "not uint8"),
        ({"pixels": np.zeros((3, 4, 4), np.uint8)}, "no key 'images'"),
        ({"images": np.zeros((3, 4, 4, 2), np.uint8)}, "has shape"),
        ({"images": np.zeros((3, 4, 4), np.uint8), "labels": np.zeros(2, np.int64)}, "expected integers"),
        ({"images": np.zeros((3, 4, 4), np.uint8), "label": np.zeros(3, np.int64)}, "unexpected keys"),
    ],
)
def test_npz_errors(tmp_path: Path, arrays: dict[str, np.ndarray], phrase: str) -> None:
    np.savez(tmp_path / "bad.npz", **arrays)
    with _data_error(phrase) as info:
        load_split(f"npz:{tmp_path / 'bad.npz'}", "all")
    _one_paragraph(info)


def test_npz_not_an_archive(tmp_path: Path) -> None:
    np.save(tmp_path / "single.npy", np.zeros((2, 3, 3), np.uint8))
    with _data_error("not an .npz archive"):
        load_split(f"npz:{tmp_path / 'single.npy'}", "all")
    (tmp_path / "obj.npz").write_bytes(b"garbage")
    with _data_error("Cannot read .* as an .npz"):
        load_split(f"npz:{tmp_path / 'obj.npz'}", "all")


def test_excluding_everything_is_an_error(tmp_path: Path) -> None:
    np.savez(tmp_path / "one.npz", images=np.zeros((20, 2, 2), np.uint8), labels=np.zeros(20, np.int64))
    with _data_error("is empty"):
        load_split(f"npz:{tmp_path / 'one.npz'}", "train", exclude_classes=[0])


# --- spec parsing and corrupt IDX files ------------------------------------------------------------------


def test_parse_spec() -> None:
    assert parse_spec("mnist:/data/mnist") == ("mnist", "/data/mnist")
    assert parse_spec("Folder:C:/x/y") == ("folder", "C:/x/y")
    assert parse_spec(BUILTIN) == ("builtin", "mnist-10k")


@pytest.mark.parametrize(
    ("spec", "phrase"),
    [
        ("imagenet:/x", "unknown kind 'imagenet'.*fashion-mnist:DIR"),
        ("just-a-path", "no 'KIND:' prefix.*cifar10:PATH"),
        ("npz:", "nothing after the ':'"),
        ("builtin:cifar", "unknown built-in data set"),
    ],
)
def test_bad_specs(spec: str, phrase: str) -> None:
    with _data_error(phrase) as info:
        parse_spec(spec)
    _one_paragraph(info)


def test_missing_paths_and_bad_split(tmp_path: Path) -> None:
    with _data_error("does not exist"):
        load_split(f"mnist:{tmp_path / 'nowhere'}", "train")
    with _data_error("has no train-images-idx3-ubyte.gz"):
        load_split(f"fashion-mnist:{tmp_path}", "train")
    with _data_error("Unknown split 'val'"):
        load_split(BUILTIN, "val")


def _idx_copy(tmp_path: Path) -> Path:
    builtin_dir = Path(__file__).resolve().parents[2] / "hebmctl" / "data" / "builtin"
    for name in ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
        shutil.copy(builtin_dir / name, tmp_path / name)
    return tmp_path


def test_truncated_and_corrupt_gzip(tmp_path: Path) -> None:
    labels = _idx_copy(tmp_path) / "t10k-labels-idx1-ubyte.gz"
    blob = labels.read_bytes()
    labels.write_bytes(blob[: len(blob) // 2])
    with _data_error("truncated or corrupt") as info:
        load_split(f"mnist:{tmp_path}", "test")
    _one_paragraph(info)
    labels.write_bytes(blob[:20] + bytes(b ^ 0xFF for b in blob[20:60]) + blob[60:])
    with _data_error("truncated or corrupt"):
        load_split(f"mnist:{tmp_path}", "test")


def test_bad_idx_headers(tmp_path: Path) -> None:
    folder = _idx_copy(tmp_path)
    images, labels = folder / "t10k-images-idx3-ubyte.gz", folder / "t10k-labels-idx1-ubyte.gz"
    image_bytes, label_bytes = images.read_bytes(), labels.read_bytes()
    images.write_bytes(label_bytes)
    with _data_error("magic number is 2049, expected 2051"):
        load_split(f"mnist:{folder}", "test")
    images.write_bytes(image_bytes)
    labels.unlink()
    (folder / "t10k-labels-idx1-ubyte").write_bytes(gzip.decompress(label_bytes)[:-1])
    with _data_error("needs exactly 10008"):
        load_split(f"mnist:{folder}", "test")


# --- transforms, fingerprint, ImageSet ------------------------------------------------------------------


def test_unit_range_round_trip_is_exact() -> None:
    images = np.arange(256, dtype=np.uint8).reshape(4, 8, 8, 1).repeat(3, axis=3)
    unit = to_unit_range(images)
    assert unit.dtype == torch.float32 and unit.shape == (4, 3, 8, 8)
    assert unit.min().item() == -1.0 and unit.max().item() == 1.0
    assert np.array_equal(from_unit_range(unit), images)
    assert torch.equal(to_unit_range(torch.from_numpy(images)), unit)


def test_from_unit_range_clamps_and_rejects_nan() -> None:
    out = from_unit_range(torch.tensor([-3.0, -1.0, 0.0, 1.0, 7.0]).reshape(1, 1, 1, 5))
    assert out.shape == (1, 1, 5, 1) and out.dtype == np.uint8 and out.ravel().tolist() == [0, 0, 128, 255, 255]
    with pytest.raises(ValueError, match="NaN"):
        from_unit_range(torch.full((1, 1, 2, 2), float("nan")))


def test_fingerprint_stable_and_sensitive(builtin_all: ImageSet) -> None:
    again = load_split(BUILTIN, "all")
    assert again.fingerprint() == builtin_all.fingerprint() and len(builtin_all.fingerprint()) == 64
    pixels = builtin_all.images.copy()
    pixels[123, 4, 5, 0] ^= 1
    changed = dataclasses.replace(builtin_all, images=pixels)
    assert changed.fingerprint() != builtin_all.fingerprint()
    shifted = dataclasses.replace(builtin_all, index=builtin_all.index + 1)
    assert shifted.fingerprint() != builtin_all.fingerprint()


def test_imageset_is_frozen(builtin_all: ImageSet) -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        builtin_all.split = "train"  # type: ignore[misc]


def test_npz_errors_never_suggest_unpickling(tmp_path: Path) -> None:
    """numpy's own message for these files says to pass allow_pickle=True; loading pickles can run code."""
    (tmp_path / "text.npz").write_text("images = 1, 2, 3\n")
    np.savez(tmp_path / "objects.npz", images=np.array([{"a": 1}, None], dtype=object))
    for name, phrase in (("text.npz", "not the zip archive numpy.savez writes"), ("objects.npz", "array of Python objects")):
        with _data_error(phrase) as info:
            load_split(f"npz:{tmp_path / name}", "all")
        assert "pickle" not in str(info.value), str(info.value)
        _one_paragraph(info)
