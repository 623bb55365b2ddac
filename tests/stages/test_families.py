"""Every stage works unchanged on every backbone family: a tiny end-to-end run per family on real
digits (pretrain, cache-latents, both prior schemes, sample with --hierarchical / --trajectory,
eval recon and ood), resume equivalence for the new families, and refused misfits."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from hebmctl.data import from_unit_range
from hebmctl.errors import DataError
from hebmctl.io.manifest import read_manifest
from hebmctl.schemas import CacheLatentsConfig, EvalOodConfig, EvalReconConfig, SampleConfig
from hebmctl.schemas.pretrain import BackboneManifest
from hebmctl.schemas.prior import PriorManifest
from hebmctl.stages import cache_latents, eval_ood, eval_recon, pretrain, sample, train_prior
from hebmctl.stages.artifacts import load_backbone, load_prior, open_prior

from tests.conftest import tiny_pretrain_config, tiny_prior_config

FAMILY_SETTINGS = {
    "nvae": dict(backbone="nvae", groups_per_scale=(1, 1), group_channels=1, channels=8),
    "vlae": dict(backbone="vlae", latent_dims=(6, 4, 2), channels=8),
}


@pytest.fixture(scope="module", params=sorted(FAMILY_SETTINGS))
def family_run(request, tmp_path_factory) -> tuple[str, Path]:
    family = request.param
    root = tmp_path_factory.mktemp(f"family-{family}")
    torch.set_num_threads(1)
    try:
        pretrain.run(tiny_pretrain_config(root / "backbone", steps=8, **FAMILY_SETTINGS[family]))
        cache_latents.run(CacheLatentsConfig(backbone=root / "backbone", out=root / "latents", limit=96, device="cpu", store_z=True))
        for scheme in ("joint", "diffusion", "cooperative"):
            train_prior.run(tiny_prior_config(root / "backbone", root / "latents", root / "priors" / scheme, scheme=scheme,
                                              conv_channels=4, steps=4, batch_size=16))
    finally:
        torch.set_num_threads(2)
    return family, root


def test_backbone_manifest_records_group_shapes(family_run):
    family, root = family_run
    manifest, _ = read_manifest(root / "backbone", BackboneManifest)
    model = load_backbone(root / "backbone", torch.device("cpu")).model
    assert model.family == family and manifest.config.backbone == family
    assert manifest.group_shapes == model.group_shapes and manifest.group_dims == model.group_dims
    if family == "nvae":
        assert manifest.group_shapes == ((1, 14, 14), (1, 7, 7))
    with h5py.File(root / "latents" / "test.h5", "r") as handle:
        assert json.loads(handle.attrs["group_shapes"]) == [list(s) for s in model.group_shapes]
        u0, z = torch.from_numpy(handle["u0"][:16, 0]), torch.from_numpy(handle["z"][:16, 0])
    assert (model.u_to_z(u0) - z).abs().max() < 1e-4  # the cached u0 maps back to the stored posterior draw


def test_priors_use_a_conv_energy_on_spatial_groups(family_run):
    family, root = family_run
    backbone = load_backbone(root / "backbone", torch.device("cpu"))
    for scheme in ("joint", "diffusion", "cooperative"):
        prior = load_prior(root / "priors" / scheme, backbone, torch.device("cpu"))
        manifest, _ = read_manifest(root / "priors" / scheme, PriorManifest)
        assert manifest.resolved_group_shapes() == backbone.model.group_shapes
        kinds = {type(g).__name__ for g in prior.energy.groups}
        assert kinds == ({"ConvGroupEnergy"} if family == "nvae" else {"GroupEnergy"})
    cooperative, _ = open_prior(root / "priors" / "cooperative", backbone, torch.device("cpu"))  # the initializer, per group too
    assert {type(g).__name__ for g in cooperative.initializer.groups} == ({"_ConvResidual"} if family == "nvae" else {"_VectorResidual"})


@pytest.mark.parametrize("prior", ["gaussian", "joint", "diffusion", "cooperative"])
def test_sample_with_hierarchical_and_trajectory(family_run, prior, tmp_path, single_thread):
    _, root = family_run
    prior_arg = prior if prior == "gaussian" else str(root / "priors" / prior)
    config = SampleConfig(backbone=root / "backbone", prior=prior_arg, out=tmp_path / "s", n=12, batch_size=8, hierarchical=True,
                          trajectory=prior != "gaussian", trajectory_steps=20, temperature=0.7, device="cpu")
    manifest = sample.run(config)
    backbone = load_backbone(root / "backbone", torch.device("cpu"))
    model = backbone.model
    latents = load_file(str(tmp_path / "s" / "latents.safetensors"))
    assert latents["u0"].shape == (12, model.latent_dim)
    assert (model.u_to_z(0.7 * latents["u0"]) - latents["z"]).abs().max() < 1e-5  # z = T(tau * u_0)
    for layer in range(model.num_layers):
        tiles = _grid_tiles(tmp_path / "s" / f"hierarchical_z{layer + 1}.png", backbone.manifest.image_shape)
        assert tiles.shape[:2] == (8, 8)  # row r: sample r of the first 8, its layer `layer + 1` redrawn in each of 8 columns
        if prior == "gaussian":  # the exact content: T(tau * u) of u0[:8] with that layer's u redrawn from N(0, I) (seeded)
            mask = model.layer_mask({layer}, torch.device("cpu"))
            generator = torch.Generator().manual_seed(manifest.config.seed * 7919 + layer)
            u_fixed = latents["u0"][:8].repeat_interleave(8, dim=0)
            u_new = u_fixed * (1 - mask) + torch.randn(u_fixed.shape, generator=generator) * mask
            with torch.no_grad():
                expected = from_unit_range(model.decode(model.u_to_z(0.7 * u_new)).clamp(-1, 1))
            diff = np.abs(tiles.reshape(64, *expected.shape[1:]).astype(int) - expected.astype(int))
            assert diff.max() <= 1  # uint8 rounding of float noise at most
    assert manifest.prior_kind == prior


def _grid_tiles(path, image_shape, pad: int = 2, scale: int = 2) -> np.ndarray:
    """A grid PNG (hebmctl.io.images.save_grid) -> its tiles uint8 `[rows, cols, H, W, C]`."""
    grid = np.asarray(Image.open(path))[::scale, ::scale]
    grid = grid[..., None] if grid.ndim == 2 else grid
    h, w = image_shape[0], image_shape[1]
    rows, cols = (grid.shape[0] - pad) // (h + pad), (grid.shape[1] - pad) // (w + pad)
    assert grid.shape[:2] == (rows * (h + pad) + pad, cols * (w + pad) + pad)
    return np.stack([np.stack([grid[pad + r * (h + pad): pad + r * (h + pad) + h, pad + c * (w + pad): pad + c * (w + pad) + w]
                               for c in range(cols)]) for r in range(rows)])


def test_eval_recon_and_ood(family_run, tmp_path, single_thread):
    _, root = family_run
    recon = eval_recon.run(EvalReconConfig(backbone=root / "backbone", limit=32, out=tmp_path / "recon", device="cpu"))
    assert recon.metrics["recon_mse"] > 0
    ood = eval_ood.run(EvalOodConfig(backbone=root / "backbone", prior=str(root / "priors" / "joint"), ood="builtin:mnist-10k",
                                     k=(0, 1), limit=16, batch_size=16, out=tmp_path / "ood", device="cpu"))
    assert set(ood.metrics["scores"]) >= {"-L>0", "-L>1"}


def test_resume_gives_identical_weights(tmp_path, single_thread):
    """nvae: stopping after 4 steps and re-running equals an uninterrupted 8-step run, bitwise."""
    settings = FAMILY_SETTINGS["nvae"] | dict(steps=8, checkpoint_every=4)
    pretrain.run(tiny_pretrain_config(tmp_path / "whole", **settings))
    stopped = pretrain.run(tiny_pretrain_config(tmp_path / "resumed", **settings), pretrain.RunControl(stop_after=4))
    assert stopped is None
    pretrain.run(tiny_pretrain_config(tmp_path / "resumed", **settings))
    whole = load_file(str(tmp_path / "whole" / "weights.safetensors"))
    resumed = load_file(str(tmp_path / "resumed" / "weights.safetensors"))
    assert whole.keys() == resumed.keys() and all(torch.equal(whole[k], resumed[k]) for k in whole)


def test_a_config_that_cannot_fit_the_images_is_refused_before_any_file(tmp_path):
    out = tmp_path / "backbone"
    with pytest.raises(DataError, match="divisible by 8"):
        pretrain.run(tiny_pretrain_config(out, backbone="nvae", groups_per_scale=(1, 1, 1)))
    assert not out.exists()
