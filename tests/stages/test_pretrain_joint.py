"""`pretrain --prior joint`: a tiny joint run on real MNIST digits, resume, rollback, and the prior as other stages read it."""

import json
import shutil

import numpy as np
import pytest
import torch

from hebmctl.errors import DivergenceError
from hebmctl.io.manifest import read_manifest
from hebmctl.io.state import load_tensors
from hebmctl.schemas import PriorManifest, SampleConfig
from hebmctl.stages import pretrain, sample
from hebmctl.stages.artifacts import ENERGY_NAME, load_backbone, load_prior

from tests.conftest import tiny_pretrain_config

JOINT = dict(prior="joint", prior_langevin_steps=4, energy_width=16, energy_depth=1)


def joint_config(run, **overrides):
    return tiny_pretrain_config(run / "backbone", run=run, **(JOINT | overrides))


@pytest.fixture(scope="module")
def joint_run(tmp_path_factory):
    """RUN folder of a complete tiny joint run (12 steps, checkpoints every 4)."""
    torch.set_num_threads(1)
    run = tmp_path_factory.mktemp("joint") / "run"
    pretrain.run(joint_config(run))
    return run


def test_joint_run_writes_a_backbone_and_a_prior_the_loaders_accept(joint_run):
    device = torch.device("cpu")
    backbone = load_backbone(joint_run / "backbone", device)
    prior = load_prior(joint_run / "priors" / "joint-learned", backbone, device)  # lineage and integrity checks pass
    assert prior.manifest.learned_jointly and prior.manifest.config.scheme == "joint"
    assert prior.manifest.config.langevin_steps == 4 and prior.manifest.step_sizes == [0.1]
    records = [json.loads(line) for line in (joint_run / "backbone" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [2, 4, 6, 8, 10, 12]
    assert {"energy_gap", "ebm_term", "recon_nll", "gauss_positive", "energy_grad_norm", "mse", "loss", "kl_per_layer"} <= set(records[-1])
    assert all(abs(r["energy_gap"]) < 100 for r in records)
    energy, _ = load_tensors(joint_run / "priors" / "joint-learned" / ENERGY_NAME)
    checkpoint, _ = load_tensors(joint_run / "backbone" / "checkpoints" / "ckpt-000012" / "energy_ema.safetensors")
    assert all(torch.equal(energy[k], checkpoint[k]) for k in energy)  # the prior holds the EMA weights


def test_sample_reads_the_jointly_learned_prior(joint_run, tmp_path):
    prior = str(joint_run / "priors" / "joint-learned")
    manifest = sample.run(SampleConfig(backbone=joint_run / "backbone", prior=prior, out=tmp_path / "s", n=8, batch_size=4, device="cpu"))
    assert manifest.prior_kind == "joint" and manifest.sampler["langevin_steps"] == 4
    latents, _ = load_tensors(tmp_path / "s" / "latents.safetensors")
    assert torch.isfinite(latents["z"]).all() and latents["z"].shape == (8, 14)
    images = np.load(tmp_path / "s" / "images.npz", allow_pickle=False)["images"]
    assert images.shape == (8, 28, 28, 1) and images.std() > 0


def test_resume_after_interruption_gives_identical_backbone_and_prior(joint_run, tmp_path):
    config = joint_config(tmp_path / "run")
    assert pretrain.run(config, pretrain.RunControl(stop_after=6)) is None  # between checkpoints 4 and 8: resumes from 4
    pretrain.run(config)
    for name in ("backbone/weights.safetensors", "priors/joint-learned/energy.safetensors"):
        resumed, _ = load_tensors(tmp_path / "run" / name)
        straight, _ = load_tensors(joint_run / name)
        assert resumed.keys() == straight.keys()
        assert all(torch.equal(resumed[k], straight[k]) for k in straight), name


def test_missing_prior_is_rebuilt_from_the_final_checkpoint(joint_run, tmp_path):
    shutil.copytree(joint_run, tmp_path / "run")
    shutil.rmtree(tmp_path / "run" / "priors")
    pretrain.run(joint_config(tmp_path / "run"))
    rebuilt, _ = load_tensors(tmp_path / "run" / "priors" / "joint-learned" / ENERGY_NAME)
    original, _ = load_tensors(joint_run / "priors" / "joint-learned" / ENERGY_NAME)
    assert all(torch.equal(rebuilt[k], original[k]) for k in original)
    read_manifest(tmp_path / "run" / "priors" / "joint-learned", PriorManifest)


def test_runaway_energy_gap_rolls_back_then_stops(tmp_path, single_thread):
    config = joint_config(tmp_path / "run", steps=4, max_energy_gap=1e-9, max_rollbacks=2)
    with pytest.raises(DivergenceError, match="after 2 rollbacks"):
        pretrain.run(config)


def test_a_diverging_mle_run_names_the_posterior_step_size_and_variational_runs_do_not(tmp_path, single_thread):
    """The posterior chain's stable step shrinks with the decoder std, so MLE's error must point at it (seen at s = 0.1 on MNIST)."""
    mle = joint_config(tmp_path / "mle", steps=2, max_energy_gap=1e-9, max_rollbacks=0, posterior="langevin", posterior_langevin_steps=2,
                       posterior_step_size=0.07)
    with pytest.raises(DivergenceError, match=r"--posterior-step-size \(now 0.07\)"):
        pretrain.run(mle)
    with pytest.raises(DivergenceError) as variational:
        pretrain.run(joint_config(tmp_path / "q", steps=2, max_energy_gap=1e-9, max_rollbacks=0))
    assert "--posterior-step-size" not in str(variational.value)


def test_mle_with_posterior_langevin_trains_q_and_the_prior(tmp_path, single_thread):
    config = joint_config(tmp_path / "run", steps=4, checkpoint_every=2, posterior="langevin", posterior_langevin_steps=3)
    manifest = pretrain.run(config)
    assert manifest.config.posterior == "langevin" and manifest.config.posterior_init == "q"
    initial = pretrain._fresh_model(config, pretrain.check_inputs(config)[0], torch.device("cpu"))
    trained = load_backbone(tmp_path / "run" / "backbone", torch.device("cpu")).model
    for module in ("encoder", "decoder", "prior_heads"):  # q by eq. 19, the generator and the prior nets by the Langevin samples
        before, after = getattr(initial, module).state_dict(), getattr(trained, module).state_dict()
        assert any(not torch.equal(before[k], after[k]) for k in before), module
    records = [json.loads(line) for line in (tmp_path / "run" / "backbone" / "metrics.jsonl").read_text().splitlines()]
    assert all(r["elbo"] is None and "posterior_log_density" in r for r in records)


@pytest.mark.parametrize("family", ["vlae", "nvae"])
def test_joint_learning_runs_on_every_family(family, tmp_path, single_thread):
    extra = {"latent_dims": (4, 4, 4)} if family == "vlae" else {"groups_per_scale": (1, 1), "group_channels": 1}
    config = joint_config(tmp_path / "run", backbone=family, steps=2, checkpoint_every=2, log_every=1, **extra)
    pretrain.run(config)
    backbone = load_backbone(tmp_path / "run" / "backbone", torch.device("cpu"))
    load_prior(tmp_path / "run" / "priors" / "joint-learned", backbone, torch.device("cpu"))


def test_joint_options_need_prior_joint_and_no_free_bits(tmp_path):
    with pytest.raises(ValueError, match="apply to --prior joint only"):
        tiny_pretrain_config(tmp_path, energy_l2=0.3)
    with pytest.raises(ValueError, match="free-bits 0"):
        joint_config(tmp_path, free_bits=0.25)
    assert tiny_pretrain_config(tmp_path, prior="gaussian").hashed_fields() == tiny_pretrain_config(tmp_path).hashed_fields()


def test_a_two_stage_prior_trains_on_the_jointly_learned_backbone(joint_run, tmp_path, single_thread):
    from hebmctl.schemas import CacheLatentsConfig
    from hebmctl.stages import cache_latents, train_prior

    from tests.conftest import tiny_prior_config

    backbone = joint_run / "backbone"
    cache_latents.run(CacheLatentsConfig(backbone=backbone, out=tmp_path / "latents", limit=64, device="cpu"))
    manifest = train_prior.run(tiny_prior_config(backbone, tmp_path / "latents", tmp_path / "prior", scheme="joint", steps=2))
    assert manifest.learned_jointly is None
    load_prior(tmp_path / "prior", load_backbone(backbone, torch.device("cpu")), torch.device("cpu"))
