"""`sample --inpaint IMAGE --mask MASK` (issue 16 item 4): latent footprints, fixed latents, pasted pixels, refused inputs,
and tiny end-to-end runs on a spatial (nvae) and a vector (hvae) backbone trained on real digits."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from pydantic import ValidationError
from safetensors.torch import load_file
from typer.testing import CliRunner

from hebmctl import priors
from hebmctl.cli import app
from hebmctl.data import load_split, to_unit_range
from hebmctl.data.inpaint_inputs import NAMED_MASKS
from hebmctl.errors import ConfigError, DataError
from hebmctl.io.manifest import read_manifest
from hebmctl.priors.inpainting import InpaintSettings, anchor_in_z, free_latent_mask, infer_latents, inpaint, visible_log_density
from hebmctl.schemas import CacheLatentsConfig, SampleConfig, SamplesManifest
from hebmctl.stages import cache_latents, pretrain, sample, train_prior
from hebmctl.stages.artifacts import load_backbone

from tests.conftest import tiny_pretrain_config, tiny_prior_config

NVAE = dict(backbone="nvae", groups_per_scale=(1, 1), group_channels=1, channels=8)  # groups [1, 14, 14] (bottom), [1, 7, 7] (top)


@pytest.fixture(scope="module")
def digits(tmp_path_factory) -> Path:
    """Three real test digits as an npz (uint8 [3, 28, 28, 1])."""
    path = tmp_path_factory.mktemp("digits") / "digits.npz"
    np.savez(path, images=load_split("builtin:mnist-10k", "test", limit=3).images)
    return path


@pytest.fixture(scope="module")
def nvae_run(tmp_path_factory) -> Path:
    """A tiny nvae backbone with a tiny joint and diffusion prior, on real digits."""
    root = tmp_path_factory.mktemp("nvae")
    torch.set_num_threads(1)
    try:
        pretrain.run(tiny_pretrain_config(root / "backbone", steps=60, kl_warmup_steps=20, **NVAE))  # a decoder that reads z
        cache_latents.run(CacheLatentsConfig(backbone=root / "backbone", out=root / "latents", limit=64, device="cpu"))
        for scheme in ("joint", "diffusion"):
            train_prior.run(tiny_prior_config(root / "backbone", root / "latents", root / "priors" / scheme, scheme=scheme,
                                              conv_channels=4, steps=2, batch_size=16))
    finally:
        torch.set_num_threads(2)
    return root


@pytest.fixture(scope="module")
def vlae_backbone(tmp_path_factory) -> Path:
    """A tiny vlae backbone (vector groups 6, 4, 2) whose decoder reads z (60 steps on real digits)."""
    out = tmp_path_factory.mktemp("vlae") / "backbone"
    torch.set_num_threads(1)
    try:
        pretrain.run(tiny_pretrain_config(out, backbone="vlae", latent_dims=(6, 4, 2), steps=60, kl_warmup_steps=20))
    finally:
        torch.set_num_threads(2)
    return out


def _config(backbone, out, **kw) -> SampleConfig:
    return SampleConfig(**(dict(backbone=backbone, out=out, device="cpu", inpaint_draws=2) | kw))


def test_footprint_of_a_pixel_mask_per_latent_group(nvae_run, tiny_backbone):
    """Spatial groups: a position is free iff its up-sampling block overlaps a masked pixel; vector groups: all free."""
    model = load_backbone(nvae_run / "backbone", torch.device("cpu")).model
    left = torch.from_numpy(NAMED_MASKS["left-half"](28, 28).astype(np.float32))  # columns 0..13
    bottom, top = (m.reshape(m.shape[1:]) for m in model.group_maps(model.latent_footprint_mask(left)[None]))
    assert bottom.shape == (1, 14, 14) and top.shape == (1, 7, 7)
    assert bottom[0, :, :7].eq(1).all() and bottom[0, :, 7:].eq(0).all()  # 2x2 blocks: columns 0..13 are positions 0..6
    assert top[0, :, :4].eq(1).all() and top[0, :, 4:].eq(0).all()  # 4x4 blocks: position 3 covers columns 12..15
    one = torch.zeros(28, 28)
    one[5, 9] = 1
    bottom, top = (m.reshape(m.shape[1:]) for m in model.group_maps(model.latent_footprint_mask(one)[None]))
    assert bottom.sum() == 1 and bottom[0, 2, 4] == 1 and top.sum() == 1 and top[0, 1, 2] == 1
    vector = load_backbone(tiny_backbone, torch.device("cpu")).model
    assert vector.latent_footprint_mask(one).eq(1).all()


def test_named_masks():
    center = NAMED_MASKS["center"](28, 28)
    assert center.sum() == 14 * 14 and center[7:21, 7:21].all()
    assert NAMED_MASKS["bottom-half"](28, 28)[14:].all() and not NAMED_MASKS["bottom-half"](28, 28)[:14].any()
    assert NAMED_MASKS["right-half"](28, 28)[:, 14:].all() and not NAMED_MASKS["right-half"](28, 28)[:, :14].any()


@pytest.mark.parametrize("prior", ["gaussian", "joint", "diffusion"])
def test_unmasked_latents_stay_fixed_and_visible_pixels_are_the_input(nvae_run, digits, tmp_path, prior, single_thread):
    prior_arg = prior if prior == "gaussian" else str(nvae_run / "priors" / prior)
    manifest = sample.run(_config(nvae_run / "backbone", tmp_path / "s", prior=prior_arg, inpaint=digits, mask="center"))
    latents = load_file(str(tmp_path / "s" / "latents.safetensors"))
    free, u, u_q = latents["latent_mask"].bool(), latents["u"], latents["u_inferred"]
    assert 0 < free.sum() < free.numel()
    for s in range(2):
        assert torch.equal(u[:, s][:, ~free], u_q[:, ~free])  # exactly fixed
        assert (u[:, s][:, free] != u_q[:, free]).float().mean() > 0.99  # every free latent redrawn
    assert not torch.equal(u[:, 0][:, free], u[:, 1][:, free])  # the draws differ
    arrays = np.load(tmp_path / "s" / "images.npz")
    mask = arrays["mask"].astype(bool)
    original, inpainted = arrays["original"], arrays["inpainted"]
    assert inpainted.shape == (3, 2, 28, 28, 1) and arrays["images"].shape == (6, 28, 28, 1)
    assert np.array_equal(inpainted[:, :, ~mask], np.broadcast_to(original[:, None, ~mask], inpainted[:, :, ~mask].shape))
    assert np.array_equal(inpainted[:, :, mask], arrays["raw"][:, :, mask])  # the fill is the raw decode
    grid = Image.open(tmp_path / "s" / "grid.png")
    assert grid.size == (2 * (3 * 30 + 2), 2 * (4 * 30 + 2))  # 3 columns; rows: masked input, 2 draws, original
    roles = {i.role: i for i in manifest.inputs}
    assert roles["inpaint:mask"].kind == "named-mask" and len(roles["inpaint:image"].sha256) == 64
    assert manifest.sampler["inpaint"]["draws"] == 2 and read_manifest(tmp_path / "s", SamplesManifest)[0] == manifest


def test_fixing_in_z_keeps_the_inferred_latents_under_redrawn_parents(nvae_run, digits, tmp_path, single_thread):
    """nvae is a conditional hierarchy: with u fixed, the fixed positions' z move when free parents are redrawn; with
    --inpaint-fix z they keep z_q = T(u_q) (to float32 rounding) and the free coordinates keep the prior's draw."""
    model = load_backbone(nvae_run / "backbone", torch.device("cpu")).model
    generator = torch.Generator().manual_seed(0)
    u_q, u = torch.randn(4, model.latent_dim, generator=generator), torch.randn(4, model.latent_dim, generator=generator)
    free = model.latent_footprint_mask(torch.from_numpy(NAMED_MASKS["center"](28, 28).astype(np.float32)))
    fixed = free == 0
    u_draw = u_q * (1 - free) + u * free
    anchored = anchor_in_z(model, u_draw, u_q, free)
    with torch.no_grad():
        z_q, z_draw, z_anchored = model.u_to_z(u_q), model.u_to_z(u_draw), model.u_to_z(anchored)
    assert torch.equal(anchored[:, free == 1], u_draw[:, free == 1])
    assert torch.allclose(z_anchored[:, fixed], z_q[:, fixed], atol=1e-5)
    assert not torch.allclose(z_draw[:, fixed], z_q[:, fixed], atol=1e-3)  # u fixed is not z fixed
    manifest = sample.run(_config(nvae_run / "backbone", tmp_path / "s", inpaint=digits, mask="center", inpaint_fix="z"))
    latents = load_file(str(tmp_path / "s" / "latents.safetensors"))
    with torch.no_grad():
        z_out, z_in = model.u_to_z(latents["u"][:, 0]), model.u_to_z(latents["u_inferred"])
    assert torch.allclose(z_out[:, fixed], z_in[:, fixed], atol=1e-5) and manifest.sampler["inpaint"]["fixed_in"] == "z"


@pytest.mark.parametrize("layers", [None, (0,)])
def test_data_consistency_keeps_fixed_latents_and_pulls_the_decode_toward_the_visible_pixels(vlae_backbone, digits, layers,
                                                                                               single_thread):
    """K steps of Langevin on log p(x_vis | T(u)) - |u|^2/2 over the free latents (vector groups: all of them, or the
    chosen layer): the visible pixels of the raw decode come closer to the input, the fixed latents do not move. The tiny
    backbone's likelihood is flat (decoder std ~0.6), so the test sharpens it to std 0.1 (the real ones: 0.1 - 0.2)."""
    model = load_backbone(vlae_backbone, torch.device("cpu")).model
    model.log_std_x.fill_(float(np.log(0.1)))
    prior = priors.gaussian(model, torch.device("cpu"))
    x = to_unit_range(np.load(digits)["images"])
    pixel_mask = torch.from_numpy(NAMED_MASKS["bottom-half"](28, 28).astype(np.float32))
    u_q = infer_latents(model, x, pixel_mask)
    free = free_latent_mask(model, pixel_mask, layers)

    def visible_mse(steps: int) -> tuple[float, torch.Tensor]:
        result = inpaint(prior, x, pixel_mask, u_q, free, InpaintSettings(guidance_steps=steps), torch.Generator().manual_seed(0))
        return float(((result.x_raw - x) ** 2 * (1 - pixel_mask)).mean()), result.u

    (plain, _), (guided, u) = visible_mse(0), visible_mse(30)
    assert torch.equal(u[:, free == 0], u_q[:, free == 0]) and not torch.equal(u[:, free == 1], u_q[:, free == 1])
    assert guided < 0.8 * plain, (plain, guided)


def test_visible_likelihood_ignores_the_masked_pixels(tiny_backbone):
    model = load_backbone(tiny_backbone, torch.device("cpu")).model
    mask = torch.from_numpy(NAMED_MASKS["center"](28, 28).astype(np.float32))
    x = to_unit_range(load_split("builtin:mnist-10k", "test", limit=2).images)
    scribbled = x.clone()
    scribbled[:, :, 7:21, 7:21] = torch.rand(2, 1, 14, 14) * 2 - 1
    u = torch.randn(2, model.latent_dim, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        same = visible_log_density(model, None, x, mask)(u), visible_log_density(model, None, scribbled, mask)(u)
        visible_changed = visible_log_density(model, None, x.flip(-1), mask)(u)
    assert torch.allclose(*same) and not torch.allclose(same[0], visible_changed)


def _png(path: Path, array: np.ndarray) -> Path:
    Image.fromarray(array).save(path)
    return path


def test_bad_inputs_are_refused_before_any_compute(tiny_backbone, digits, tmp_path, monkeypatch):
    from hebmctl.stages import inpainting

    monkeypatch.setattr(inpainting, "_run", lambda *a: pytest.fail("computed"))
    gray = load_split("builtin:mnist-10k", "test", limit=1).images[0, :, :, 0]
    image = _png(tmp_path / "x.png", gray)
    cases = {
        "wrong size": (dict(inpaint=_png(tmp_path / "small.png", gray[:20, :20]), mask="center"), ConfigError, "20x20"),
        "wrong channels": (dict(inpaint=_png(tmp_path / "rgb.png", np.stack([gray] * 3, -1)), mask="center"), ConfigError, "3 channel"),
        "nothing masked": (dict(inpaint=image, mask=str(_png(tmp_path / "black.png", np.zeros((28, 28), np.uint8)))), ConfigError,
                           "no pixel"),
        "all masked": (dict(inpaint=image, mask=str(_png(tmp_path / "white.png", np.full((28, 28), 255, np.uint8)))), ConfigError,
                       "every pixel"),
        "mask size": (dict(inpaint=image, mask=str(_png(tmp_path / "m.png", np.full((14, 14), 255, np.uint8)))), ConfigError, "14x14"),
        "unknown name": (dict(inpaint=image, mask="centre"), ConfigError, "named mask"),
        "unreadable": (dict(inpaint=tmp_path / "junk.png", mask="center"), DataError, "junk.png"),
        "missing": (dict(inpaint=tmp_path / "none.png", mask="center"), DataError, "cannot read"),
        "layer": (dict(inpaint=digits, mask="center", inpaint_layers=(4,)), ConfigError, "3 latent layers"),
        "vector latents only": (dict(inpaint=digits, mask="center"), ConfigError, "--inpaint-layers"),
    }
    (tmp_path / "junk.png").write_bytes(b"not a png")
    for name, (settings, error, text) in cases.items():
        with pytest.raises(error, match=text):
            sample.run(_config(tiny_backbone, tmp_path / name, **settings))
        assert not (tmp_path / name).exists(), name
    with pytest.raises(ValidationError, match="go together"):
        _config(tiny_backbone, tmp_path / "o", inpaint=image)
    with pytest.raises(ValidationError, match="only apply with --inpaint"):
        _config(tiny_backbone, tmp_path / "o", inpaint_layers=(1,))
    with pytest.raises(ValidationError, match="do not combine"):
        _config(tiny_backbone, tmp_path / "o", inpaint=image, mask="center", hierarchical=True)


def test_end_to_end_cli_on_a_vector_backbone(tiny_backbone, tiny_priors, tmp_path, single_thread):
    """hvae (vector latents): --inpaint-layers 1 redraws z1 only; a PNG image and a PNG mask; re-running is up to date,
    another mask is another artifact."""
    gray = load_split("builtin:mnist-10k", "test", limit=1).images[0, :, :, 0]
    image = _png(tmp_path / "x.png", gray)
    mask_array = np.zeros((28, 28), np.uint8)
    mask_array[14:, :] = 255
    mask = _png(tmp_path / "mask.png", mask_array)
    args = ["sample", "--backbone", tiny_backbone, "--prior", tiny_priors["joint"], "--out", tmp_path / "s", "--device", "cpu",
            "--inpaint", image, "--mask", mask, "--inpaint-layers", "1", "--inpaint-draws", "3", "--inpaint-guidance-steps", "2"]
    result = CliRunner().invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    manifest, _ = read_manifest(tmp_path / "s", SamplesManifest)
    assert manifest.sampler["inpaint"]["free_latent_fraction_per_layer"] == [1.0, 0.0, 0.0]
    latents = load_file(str(tmp_path / "s" / "latents.safetensors"))
    assert latents["u"].shape == (1, 3, 14) and torch.equal(latents["u"][0, :, 8:], latents["u_inferred"][:, 8:].expand(3, -1))
    arrays = np.load(tmp_path / "s" / "images.npz")
    assert np.array_equal(arrays["inpainted"][0, :, :14], np.broadcast_to(gray[None, :14, :, None], (3, 14, 28, 1)))
    assert {i.role for i in manifest.inputs} >= {"inpaint:image", "inpaint:mask"}
    again = CliRunner().invoke(app, [str(a) for a in args])
    assert again.exit_code == 0 and "up to date" in " ".join(again.output.split())
    other = sample.run(_config(tiny_backbone, tmp_path / "t", prior=str(tiny_priors["joint"]), inpaint=image, mask="bottom-half",
                               inpaint_layers=(1,), inpaint_draws=3, inpaint_guidance_steps=2))
    assert other.fingerprint != manifest.fingerprint
