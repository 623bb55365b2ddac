
import h5py
import numpy as np
import pytest
import torch

from hebmctl.data import load_split, to_unit_range
from hebmctl.errors import ArtifactError, DataError, LineageError
from hebmctl.io.latent_store import LatentLayout, LatentWriter, read_latents
from hebmctl.schemas import CacheLatentsConfig
from hebmctl.stages import cache_latents, pretrain
from hebmctl.stages.artifacts import load_backbone

from tests.conftest import tiny_pretrain_config


def _config(backbone, out, **kw):
    return CacheLatentsConfig(backbone=backbone, out=out, limit=300, batch_size=64, device="cpu", **kw)


@pytest.fixture(scope="module")
def cached(tiny_backbone, tmp_path_factory):
    out = tmp_path_factory.mktemp("latents") / "latents"
    manifest = cache_latents.run(_config(tiny_backbone, out, samples_per_image=2))
    return out, manifest


def test_cache_has_the_documented_layout(cached, tiny_backbone):
    out, manifest = cached
    backbone = load_backbone(tiny_backbone, torch.device("cpu"))
    assert manifest.input("backbone").sha256 == backbone.manifest_sha256
    with h5py.File(out / "train.h5", "r") as f:
        assert f["u0"].shape == (300, 2, 14) and f["u0"].chunks[0] <= 300
        assert list(f.attrs["group_dims"]) == [8, 4, 2]
        assert [str(n) for n in f.attrs["group_names"]] == ["z1", "z2", "z3"]
        assert int(f.attrs["rows_written"]) == 300
    train = read_latents(out / "train.h5")
    expected = load_split("builtin:mnist-10k", "train", (), 300)
    assert np.array_equal(train.labels, expected.labels) and np.array_equal(train.index, expected.index)
    assert not np.allclose(train.u0[:, 0], train.u0[:, 1])  # two different posterior samples
    test = read_latents(out / "test.h5")
    assert np.array_equal(test.index, load_split("builtin:mnist-10k", "test", (), 300).index) and test.index.min() >= 9000
    assert manifest.input("data:test").subset.n == 300 and manifest.input("data:test").subset.population == 1000
    assert manifest.metrics["splits"]["train"]["images_per_s"] > 0


def test_u0_maps_back_to_posterior_samples(tiny_backbone, tmp_path):
    """Stored z = T(u0), and both are the posterior draws of the images the rows name (by `index`), in order."""
    cache_latents.run(_config(tiny_backbone, tmp_path / "lat", samples_per_image=2, splits=("test",), store_z=True))
    model = load_backbone(tiny_backbone, torch.device("cpu")).model
    with h5py.File(tmp_path / "lat" / "test.h5", "r") as f:
        u0, z, index = torch.from_numpy(f["u0"][()]), torch.from_numpy(f["z"][()]), f["index"][()]
    assert (model.u_to_z(u0.reshape(-1, 14)) - z.reshape(-1, 14)).abs().max() < 1e-5  # z = T(u0), not any u0's round trip
    images = load_split("builtin:mnist-10k", "test").images[index - 9000][:64]  # the rows' own images, looked up by index
    generator = torch.Generator().manual_seed(0 * 1_000_003 + cache_latents.SPLIT_IDS["test"] * 100_000_007 + 0)  # seed 0, first batch
    u_expected, z_expected = cache_latents.infer_u0(model, to_unit_range(images), 2, generator)
    torch.testing.assert_close(z[:64], z_expected, rtol=0, atol=1e-6)
    torch.testing.assert_close(u0[:64], u_expected, rtol=0, atol=1e-6)
    assert not torch.allclose(u0[:64, 0], u0[:64, 1])  # two posterior draws per image


def test_interrupted_cache_resumes_to_identical_file(cached, tiny_backbone, tmp_path):
    out, _ = cached
    config = _config(tiny_backbone, tmp_path / "lat", samples_per_image=2)
    # Simulate a run killed after 128 train rows: a partial tmp file written by the stage's own code path.
    full = read_latents(out / "train.h5")
    backbone = load_backbone(tiny_backbone, torch.device("cpu"))
    from hebmctl.io.manifest import stage_fingerprint
    from hebmctl.schemas.common import InputRef

    inputs = [InputRef(role="backbone", path=str(tiny_backbone), kind="backbone", sha256=backbone.manifest_sha256)]
    for split in config.splits:
        inputs.append(InputRef(role=f"data:{split}", path="builtin:mnist-10k", kind="data",
                               sha256=load_split("builtin:mnist-10k", split, (), 300).fingerprint()))
    layout = LatentLayout(n_rows=300, samples_per_image=2, group_dims=(8, 4, 2), group_names=("z1", "z2", "z3"))
    with LatentWriter(tmp_path / "lat" / "train.h5", layout, backbone.manifest_sha256, stage_fingerprint(config, inputs)) as w:
        w.write(0, full.u0[:128], full.labels[:128], full.index[:128])
    manifest = cache_latents.run(config)
    assert manifest.metrics["splits"]["train"]["resumed_from_row"] == 128
    assert np.array_equal(read_latents(tmp_path / "lat" / "train.h5").u0, full.u0)


def test_partial_cache_from_another_backbone_is_refused(cached, tiny_backbone, tmp_path):
    out, _ = cached
    layout = LatentLayout(n_rows=300, samples_per_image=1, group_dims=(8, 4, 2), group_names=("z1", "z2", "z3"))
    with LatentWriter(tmp_path / "lat" / "train.h5", layout, "f" * 64, "whatever") as w:
        w.write(0, np.zeros((10, 1, 14), np.float32), np.zeros(10, np.int64), np.arange(10))
    with pytest.raises(LineageError, match="ffffffffffff"):
        cache_latents.run(_config(tiny_backbone, tmp_path / "lat"))
    assert (tmp_path / "lat" / "train.h5.tmp").exists()  # nothing overwritten
    cache_latents.run(_config(tiny_backbone, tmp_path / "lat"), cache_latents.RunControl(force=True))
    assert (tmp_path / "lat" / "manifest.json").exists()


def test_float16_gzip_storage(tiny_backbone, tmp_path):
    manifest = cache_latents.run(_config(tiny_backbone, tmp_path / "lat", storage_dtype="float16", compression="gzip", splits=("test",),
                                         store_z=True))
    with h5py.File(tmp_path / "lat" / "test.h5", "r") as f:
        assert f["u0"].dtype == np.float16 and f["u0"].compression == "gzip" and f["z"].shape == f["u0"].shape
    assert [o.name for o in manifest.outputs] == ["test.h5"]


def test_missing_or_incomplete_backbone_is_a_clear_error(tiny_backbone, tmp_path):
    with pytest.raises(ArtifactError, match="no manifest.json"):
        cache_latents.run(_config(tmp_path / "nothing", tmp_path / "lat"))
    partial = tmp_path / "partial"
    pretrain.run(tiny_pretrain_config(partial), pretrain.RunControl(stop_after=4))
    with pytest.raises(ArtifactError, match="never finished"):
        cache_latents.run(_config(partial, tmp_path / "lat"))
    assert not (tmp_path / "lat").exists()


def test_images_of_another_size_are_refused_before_anything_is_written(tiny_backbone, tmp_path):
    np.savez(tmp_path / "rgb.npz", images=np.zeros((20, 28, 28, 3), np.uint8))
    with pytest.raises(DataError, match=r"shape \(28, 28, 3\).*trained on \(28, 28, 1\)"):
        cache_latents.run(_config(tiny_backbone, tmp_path / "lat", data=f"npz:{tmp_path / 'rgb.npz'}"))
    assert not (tmp_path / "lat").exists()
