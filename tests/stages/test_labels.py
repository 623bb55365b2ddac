"""train-prior --labels and sample --class / --guidance end to end through the CLI, on the tiny backbone trained on real
digits (tests/conftest.py); every refusal happens before any compute and leaves no output."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from typer.testing import CliRunner

from hebmctl.cli import app
from hebmctl.io.manifest import read_manifest
from hebmctl.schemas import SamplesManifest
from hebmctl.schemas.prior import LabelCoupling, PriorManifest

pytestmark = pytest.mark.usefixtures("single_thread")
runner = CliRunner()
TINY = ("--width", 16, "--depth", 1, "--steps", 4, "--batch-size", 32, "--langevin-steps", 2, "--device", "cpu")


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def said(result) -> str:
    """The output with the console's line wrapping undone."""
    return " ".join(result.output.split())


@pytest.fixture(scope="module")
def labelled_prior(tiny_backbone, tiny_latents, tmp_path_factory):
    out = tmp_path_factory.mktemp("labelled") / "prior"
    result = invoke("train-prior", "--backbone", tiny_backbone, "--latents", tiny_latents, "--out", out, "--labels",
                    "--label-layers", "2,3", "--label-dropout", "0.2", *TINY)
    assert result.exit_code == 0, result.output
    return out


def manifest_of(prior_folder) -> PriorManifest:
    return read_manifest(prior_folder, PriorManifest)[0]


def test_labelled_prior_manifest_and_heads(labelled_prior):
    manifest, _ = read_manifest(labelled_prior, PriorManifest)
    assert manifest.label_coupling == LabelCoupling(n_classes=10, label_groups=(1, 2), null_class=True, label_dropout=0.2,
                                                    label_weight=1.0)
    assert manifest.config.labels and manifest.config.label_layers == (2, 3)
    weights = load_file(str(labelled_prior / "energy.safetensors"))
    assert weights["groups.0.out.weight"].shape[0] == 1  # z1 is not coupled: one scalar
    assert weights["groups.1.out.weight"].shape[0] == weights["groups.2.out.weight"].shape[0] == 11  # 10 classes + null
    metrics = [line for line in (labelled_prior / "metrics.jsonl").read_text().splitlines() if line]
    assert '"label_ce"' in metrics[-1]


def test_sample_class_rows_guidance_and_composition(tiny_backbone, labelled_prior, tmp_path):
    out = tmp_path / "rows"
    result = invoke("sample", "--backbone", tiny_backbone, "--prior", labelled_prior, "--out", out, "--class", "0,1,2", "--guidance", 1,
                    "--n", 24, "--batch-size", 10, "--device", "cpu")
    assert result.exit_code == 0, result.output
    manifest, _ = read_manifest(out, SamplesManifest)
    assert manifest.config.classes == ((0, 1, 2),) and manifest.config.guidance == 1
    condition = manifest.sampler["class_condition"]
    assert condition["classes"] == [[0, 1, 2]] and condition["guidance"] == 1 and condition["grid_rows"] == 3
    assert manifest_of(labelled_prior).config.scheme == "diffusion" and condition["coupled_level"] == "t = 0"  # Diff-EBM's coupling
    assert Image.open(out / "grid.png").size[1] < Image.open(out / "grid.png").size[0]  # 3 rows of 8 columns
    images = np.load(out / "images.npz")["images"]
    assert images.shape[0] == 24 and np.isfinite(images).all()

    composed = tmp_path / "composed"
    result = invoke("sample", "--backbone", tiny_backbone, "--prior", labelled_prior, "--out", composed, "--class", 1, "--class", 7,
                    "--n", 8, "--device", "cpu")
    assert result.exit_code == 0, result.output
    manifest, _ = read_manifest(composed, SamplesManifest)
    assert manifest.config.classes == ((1,), (7,)) and manifest.sampler["class_condition"]["composition"]
    # level 0 differs from the marginal's samples with the same noise
    plain = tmp_path / "plain"
    result = invoke("sample", "--backbone", tiny_backbone, "--prior", labelled_prior, "--out", plain, "--n", 8, "--device", "cpu")
    assert result.exit_code == 0, result.output
    assert not np.array_equal(np.load(plain / "images.npz")["images"], np.load(composed / "images.npz")["images"])


def test_the_set_of_every_class_samples_the_marginal_and_sets_are_recorded(tiny_backbone, labelled_prior, tmp_path):
    """--class 0+1+...+9 is the expert 'any class', whose energy is the marginal's: the same draws as no --class (up to float
    rounding); a set composed with a class changes them, and the manifest keeps each set as a list."""
    every = "+".join(str(c) for c in range(10))
    runs = {"plain": [], "every": ["--class", every], "composed": ["--class", "0+1+2", "--class", 7],
            "conjunction": ["--class", "0+1+2", "--class", 7, "--compose", "conjunction"]}
    for name, extra in runs.items():
        result = invoke("sample", "--backbone", tiny_backbone, "--prior", labelled_prior, "--out", tmp_path / name, "--n", 8,
                        "--device", "cpu", *extra)
        assert result.exit_code == 0, result.output
    u0 = {name: load_file(str(tmp_path / name / "latents.safetensors"))["u0"] for name in runs}
    assert torch.allclose(u0["every"], u0["plain"], atol=1e-4)
    assert not torch.allclose(u0["composed"], u0["plain"], atol=1e-2)
    manifest, _ = read_manifest(tmp_path / "composed", SamplesManifest)
    assert manifest.config.classes == (((0, 1, 2),), (7,))
    assert manifest.sampler["class_condition"]["classes"] == [[[0, 1, 2]], [7]]
    assert manifest.sampler["class_condition"]["composition"].startswith("product of experts")
    conjunction, _ = read_manifest(tmp_path / "conjunction", SamplesManifest)
    assert conjunction.sampler["class_condition"]["composition"].startswith("conjunction")
    assert conjunction.fingerprint != manifest.fingerprint and not torch.allclose(u0["conjunction"], u0["composed"], atol=1e-2)


def test_wrong_class_is_refused_before_compute(tiny_backbone, labelled_prior, tiny_priors, tmp_path):
    out = tmp_path / "s"
    result = invoke("sample", "--backbone", tiny_backbone, "--prior", labelled_prior, "--out", out, "--class", 12, "--device", "cpu")
    assert result.exit_code == 2 and "10 classes" in said(result) and not out.exists()
    result = invoke("sample", "--backbone", tiny_backbone, "--prior", labelled_prior, "--out", out, "--class", "3+12", "--device", "cpu")
    assert result.exit_code == 2 and "--class 12" in said(result) and not out.exists()
    result = invoke("sample", "--backbone", tiny_backbone, "--prior", labelled_prior, "--out", out, "--class", 3, "--compose",
                    "conjunction", "--device", "cpu")
    assert result.exit_code == 2 and "at least twice" in said(result) and not out.exists()
    unlabelled = tiny_priors["diffusion"]
    result = invoke("sample", "--backbone", tiny_backbone, "--prior", unlabelled, "--out", out, "--class", 1, "--device", "cpu")
    assert result.exit_code == 2 and "--labels" in said(result) and not out.exists()
    result = invoke("sample", "--backbone", tiny_backbone, "--prior", labelled_prior, "--out", out, "--guidance", 2, "--device", "cpu")
    assert result.exit_code == 2 and "--class" in said(result) and not out.exists()


def test_train_prior_label_refusals(tiny_backbone, tiny_latents, tmp_path):
    out = tmp_path / "p"
    result = invoke("train-prior", "--backbone", tiny_backbone, "--latents", tiny_latents, "--out", out, "--labels", "--scheme",
                    "cooperative", *TINY)
    assert result.exit_code == 2 and "cooperative" in said(result) and not out.exists()
    result = invoke("train-prior", "--backbone", tiny_backbone, "--latents", tiny_latents, "--out", out, "--label-dropout", "0.1", *TINY)
    assert result.exit_code == 2 and "--labels" in said(result) and not out.exists()
    result = invoke("train-prior", "--backbone", tiny_backbone, "--latents", tiny_latents, "--out", out, "--labels", "--label-layers", 4,
                    *TINY)
    assert result.exit_code == 2 and "3 latent layers" in said(result) and not out.exists()
    result = invoke("train-prior", "--backbone", tiny_backbone, "--latents", tiny_latents, "--out", out, "--labels", "--label-factors",
                    "3,2", *TINY)
    assert result.exit_code == 2 and "multiply to 6" in said(result) and "10 classes" in said(result) and not out.exists()


def test_guidance_needs_label_dropout(tiny_backbone, tiny_latents, tmp_path):
    prior, out = tmp_path / "p", tmp_path / "s"
    result = invoke("train-prior", "--backbone", tiny_backbone, "--latents", tiny_latents, "--out", prior, "--labels", "--steps", 1,
                    *TINY[2:])
    assert result.exit_code == 0, result.output
    result = invoke("sample", "--backbone", tiny_backbone, "--prior", prior, "--out", out, "--class", 1, "--guidance", 2, "--device", "cpu")
    assert result.exit_code == 2 and "label dropout" in said(result) and not out.exists()


def test_labels_on_an_unlabelled_cache_are_refused(tiny_backbone, tmp_path):
    images = np.random.default_rng(0).integers(0, 256, (40, 28, 28), dtype=np.uint8)
    np.savez(tmp_path / "unlabelled.npz", images=images)
    latents = tmp_path / "latents"
    result = invoke("cache-latents", "--backbone", tiny_backbone, "--data", f"npz:{tmp_path / 'unlabelled.npz'}", "--out", latents,
                    "--splits", "train", "--device", "cpu")
    assert result.exit_code == 0, result.output
    out = tmp_path / "p"
    result = invoke("train-prior", "--backbone", tiny_backbone, "--latents", latents, "--out", out, "--labels", *TINY)
    assert result.exit_code == 2 and "no labels" in said(result) and not out.exists()
