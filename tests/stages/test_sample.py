import json

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from hebmctl.errors import ConfigError, DivergenceError, LineageError
from hebmctl.io.manifest import read_manifest
from hebmctl.priors.joint import TRAJECTORY_ROWS
from hebmctl.schemas import SampleConfig, SamplesManifest
from hebmctl.stages import pretrain, sample
from hebmctl.stages.artifacts import load_backbone

from tests.conftest import tiny_pretrain_config


def _config(backbone, out, **kw):
    return SampleConfig(**(dict(backbone=backbone, out=out, n=10, batch_size=4, device="cpu") | kw))


@pytest.mark.parametrize("prior", ["gaussian", "joint", "diffusion"])
def test_sample_writes_images_latents_and_manifest(tiny_backbone, tiny_priors, tmp_path, prior):
    prior_arg = prior if prior == "gaussian" else str(tiny_priors[prior])
    manifest = sample.run(_config(tiny_backbone, tmp_path / "s", prior=prior_arg, temperature=0.7))
    out = tmp_path / "s"
    images = np.load(out / "images.npz", allow_pickle=False)["images"]
    assert images.shape == (10, 28, 28, 1) and images.dtype == np.uint8
    assert len(list((out / "images").glob("*.png"))) == 10
    assert Image.open(out / "grid.png").size[0] > 28 * 8
    latents = load_file(str(out / "latents.safetensors"))
    model = load_backbone(tiny_backbone, torch.device("cpu")).model
    with torch.no_grad():
        assert torch.allclose(model.u_to_z(0.7 * latents["u0"]), latents["z"], atol=1e-5)  # z = T(tau * u0)
    assert manifest.prior_kind == prior and manifest.sampler["temperature"] == 0.7
    if prior == "diffusion":
        assert manifest.sampler["step_scale"] == 1.0 and len(manifest.sampler["step_sizes"]) == 3
    loaded, _ = read_manifest(out, SamplesManifest)
    assert loaded == manifest  # manifest round-trips through JSON


def test_same_seed_same_images_and_fewer_steps_scale_the_step(tiny_backbone, tiny_priors, tmp_path):
    prior = str(tiny_priors["diffusion"])
    a = sample.run(_config(tiny_backbone, tmp_path / "a", prior=prior))
    b = sample.run(_config(tiny_backbone, tmp_path / "b", prior=prior))
    assert np.array_equal(np.load(tmp_path / "a" / "images.npz")["images"], np.load(tmp_path / "b" / "images.npz")["images"])
    assert a.fingerprint == b.fingerprint
    c = sample.run(_config(tiny_backbone, tmp_path / "c", prior=prior, langevin_steps=1))
    assert c.sampler["step_scale"] == pytest.approx(3**0.5)  # CDRL: sqrt(K_train / K)


@pytest.mark.parametrize("prior", ["gaussian", "joint", "diffusion"])
def test_hierarchical_and_trajectory_figures(tiny_backbone, tiny_priors, tmp_path, prior):
    prior_arg = prior if prior == "gaussian" else str(tiny_priors[prior])
    manifest = sample.run(_config(tiny_backbone, tmp_path / "s", prior=prior_arg, n=8, hierarchical=True, trajectory=True,
                                  trajectory_steps=20))
    names = {o.name for o in manifest.outputs}
    assert {"hierarchical_z1.png", "hierarchical_z2.png", "hierarchical_z3.png"} <= names
    if prior != "gaussian":
        assert {"trajectory.png", "long_run.png", "energy_profile.png", "energy_profile.json"} <= names
        # trajectory.png: one row of 8 per level u_T .. u_0 (diffusion, T = 3) or per chunk of the chain (joint),
        # and the chain moves: no row repeats the one before.
        rows = 4 if prior == "diffusion" else TRAJECTORY_ROWS + 1
        grid = np.asarray(Image.open(tmp_path / "s" / "trajectory.png").convert("L"), dtype=np.float64)[::2, ::2]
        assert grid.shape == (rows * 28 + (rows + 1) * 2, 8 * 28 + 9 * 2)
        strips = [grid[2 + r * 30 : 2 + r * 30 + 28] for r in range(rows)]
        assert all(np.abs(a - b).mean() > 0 for a, b in zip(strips, strips[1:]))  # the tiny decoder moves little, but a repeated row is 0
        profile = json.loads((tmp_path / "s" / "energy_profile.json").read_text())
        assert profile["step"][0] == 0 and profile["step"][-1] == 20 and len(profile["step"]) == len(profile["neg_energy"]) == 21
        assert profile["diverged_at_step"] is None and manifest.metrics["long_run_neg_energy_end"] == profile["neg_energy"][-1]


def test_hierarchical_resampling_changes_only_its_layer(tiny_backbone, tiny_priors):
    """Every prior's masked sampler keeps every other layer fixed exactly."""
    from hebmctl.stages.artifacts import open_prior

    backbone = load_backbone(tiny_backbone, torch.device("cpu"))
    u_fixed = torch.randn(6, backbone.model.latent_dim, generator=torch.Generator().manual_seed(0))
    mask = torch.zeros(backbone.model.latent_dim)
    mask[8:12] = 1.0  # layer z2
    for folder in (None, tiny_priors["joint"], tiny_priors["diffusion"]):
        prior, _ = open_prior(folder, backbone, torch.device("cpu"))
        u = prior.resample_masked(u_fixed, mask, torch.Generator().manual_seed(1))
        assert torch.equal(u[:, mask == 0], u_fixed[:, mask == 0])
        assert not torch.allclose(u[:, mask == 1], u_fixed[:, mask == 1])


def test_prior_of_another_backbone_is_refused(tiny_priors, tmp_path):
    other = tmp_path / "other"
    pretrain.run(tiny_pretrain_config(other, seed=3))
    with pytest.raises(LineageError) as info:
        sample.run(_config(other, tmp_path / "s", prior=str(tiny_priors["joint"])))
    message = str(info.value)
    assert f"hebmctl train-prior --backbone {other} --out {tiny_priors['joint']} --force" in message
    assert f"hebmctl cache-latents --backbone {other}" in message  # the prior needs latents of this backbone first


def test_diverging_sampler_is_a_clear_error(tiny_backbone, tiny_priors, tmp_path):
    with pytest.raises(DivergenceError, match="step-size"):
        sample.run(_config(tiny_backbone, tmp_path / "s", prior=str(tiny_priors["joint"]), n=8, step_size=1e6))
    assert not (tmp_path / "s" / "manifest.json").exists()


@pytest.mark.parametrize("temperature", [1e30, 3e38])
def test_a_temperature_that_overflows_is_a_clear_error(tiny_backbone, tmp_path, temperature):
    with pytest.raises(ConfigError, match="--temperature .* non-finite"):
        sample.run(_config(tiny_backbone, tmp_path / "s", n=4, temperature=temperature))
    assert not (tmp_path / "s" / "manifest.json").exists()


def test_long_run_stops_at_divergence_and_says_when():
    """log p(u) = |u|^4 pushes chains to infinity: the profile stops at the first non-finite state."""
    from hebmctl.stages.sample import _long_run

    F = lambda u: u.pow(2).sum(1)  # noqa: E731
    u_end, profile = _long_run(F, lambda u: u.pow(4).sum(1), torch.ones(4, 3), 500, 0.5, torch.Generator().manual_seed(0))
    assert profile["diverged_at_step"] is not None and profile["diverged_at_step"] <= 500
    assert torch.isfinite(u_end).all() and len(profile["step"]) == len(profile["neg_energy"])


def test_traversal_sweeps_one_coordinate_per_row_ordered_by_image_change(tiny_backbone, tmp_path):
    manifest = sample.run(_config(tiny_backbone, tmp_path / "s", n=4, traverse=(1, 3), traverse_dims=3))
    names = {o.name for o in manifest.outputs}
    assert {"traverse_z1.png", "traverse_z3.png"} <= names and "traverse_z2.png" not in names
    record = manifest.metrics["traverse"]
    assert len(record["z1"]) == 3 and len({r["coordinate"] for r in record["z1"]}) == 3
    changes = [r["image_change"] for r in record["z1"]]
    assert changes == sorted(changes, reverse=True) and changes[0] > 0
    # The grid: 3 rows x 9 columns of 28x28 tiles; within a row only the swept coordinate moves, so the
    # row's end tiles differ by the recorded change (mean |x(+3) - x(-3)| in [-1, 1] units, up to uint8 rounding).
    grid = np.asarray(Image.open(tmp_path / "s" / "traverse_z1.png").convert("L"), dtype=np.float64)[::2, ::2]  # saved at 2x
    tile, pad = 28, 2
    assert grid.shape == (3 * tile + 4 * pad, 9 * tile + 10 * pad)

    def cell(row, col):
        top, left = pad + row * (tile + pad), pad + col * (tile + pad)
        return grid[top : top + tile, left : left + tile] / 127.5 - 1

    for row, entry in enumerate(record["z1"]):
        assert np.abs(cell(row, 8) - cell(row, 0)).mean() == pytest.approx(entry["image_change"], abs=0.02)


def test_traversal_of_a_missing_layer_is_refused_before_writing(tiny_backbone, tmp_path):
    with pytest.raises(ConfigError, match="--traverse 4: the backbone has 3 latent layers"):
        sample.run(_config(tiny_backbone, tmp_path / "s", traverse=(4,)))
    assert not (tmp_path / "s" / "manifest.json").exists()
    with pytest.raises(ValueError, match="layer numbers from 1"):
        _config(tiny_backbone, tmp_path / "s", traverse="0,1")
