"""pretrain's likelihood and NVAE stabilisers (--likelihood, --kl-balance, --spectral-reg, --precision): every stage
works on a logistic-mixture backbone, resume equivalence with every option on, KL balancing only during the warm-up,
bf16 refused on the CPU, and spelled-out defaults keep the fingerprints of earlier backbones."""

from __future__ import annotations

import json

import pytest
import torch
from pydantic import ValidationError
from safetensors.torch import load_file

from hebmctl.errors import ConfigError
from hebmctl.io.manifest import read_manifest
from hebmctl.schemas import CacheLatentsConfig, EvalOodConfig, EvalReconConfig, SampleConfig
from hebmctl.schemas.pretrain import BackboneManifest
from hebmctl.stages import cache_latents, eval_ood, eval_recon, pretrain, sample, train_prior
from hebmctl.stages.artifacts import load_backbone

from tests.conftest import tiny_pretrain_config, tiny_prior_config

NVAE_TINY = dict(backbone="nvae", groups_per_scale=(1, 1), group_channels=1, channels=8)
EVERY_OPTION = dict(likelihood="logistic-mixture", mixture_components=3, kl_balance=True, spectral_reg=0.1)


def test_every_stage_runs_on_a_logistic_mixture_backbone(tmp_path, single_thread):
    root = tmp_path
    manifest = pretrain.run(tiny_pretrain_config(root / "backbone", steps=8, **NVAE_TINY, likelihood="logistic-mixture"))
    test = manifest.metrics["test"]
    # a probability of the bin: the own-likelihood ELBO is the discrete one (nats -> bits per dimension)
    assert test["elbo_bpd_discrete"] == pytest.approx(-test["elbo_nats"] / (784 * 0.6931471805599453), rel=1e-5)
    model = load_backbone(root / "backbone", torch.device("cpu")).model
    assert model.likelihood.name == "logistic-mixture" and model.likelihood.components == 5
    cache_latents.run(CacheLatentsConfig(backbone=root / "backbone", out=root / "latents", limit=64, device="cpu"))
    for scheme in ("diffusion", "joint"):
        train_prior.run(tiny_prior_config(root / "backbone", root / "latents", root / "priors" / scheme, scheme=scheme,
                                          conv_channels=4, steps=4, batch_size=16))
    sample.run(SampleConfig(backbone=root / "backbone", prior=str(root / "priors" / "diffusion"), out=root / "s", n=8, batch_size=8,
                            device="cpu"))
    assert (root / "s" / "grid.png").is_file()
    recon = eval_recon.run(EvalReconConfig(backbone=root / "backbone", limit=16, out=root / "recon", device="cpu"))
    assert 0 < recon.metrics["recon_mse"] < 4
    # the joint prior's -L>k = log p(x | z) + ... reads the mixture's log-likelihood
    ood = eval_ood.run(EvalOodConfig(backbone=root / "backbone", prior=str(root / "priors" / "joint"), ood="builtin:mnist-10k",
                                     k=(0, 1), limit=8, batch_size=8, out=root / "ood", device="cpu"))
    assert set(ood.metrics["scores"]) >= {"-L>0", "-L>1"}


def test_resume_with_every_option_gives_identical_weights(tmp_path, single_thread):
    settings = NVAE_TINY | EVERY_OPTION | dict(steps=8, checkpoint_every=4, kl_warmup_steps=6)
    pretrain.run(tiny_pretrain_config(tmp_path / "whole", **settings))
    assert pretrain.run(tiny_pretrain_config(tmp_path / "resumed", **settings), pretrain.RunControl(stop_after=4)) is None
    pretrain.run(tiny_pretrain_config(tmp_path / "resumed", **settings))
    whole = load_file(str(tmp_path / "whole" / "weights.safetensors"))
    resumed = load_file(str(tmp_path / "resumed" / "weights.safetensors"))
    assert whole.keys() == resumed.keys() and all(torch.equal(whole[k], resumed[k]) for k in whole)
    records = [json.loads(line) for line in (tmp_path / "whole" / "metrics.jsonl").read_text().splitlines()]
    during, after = [r for r in records if r["kl_weight"] < 1], [r for r in records if r["kl_weight"] >= 1]
    assert during and after and all(r["spectral_sum"] > 0 for r in records)
    assert all(sum(r["kl_coeffs"]) == pytest.approx(2.0, abs=1e-3) and r["kl_coeffs"] != [1.0, 1.0] for r in during)
    assert all(r["kl_coeffs"] == [1.0, 1.0] for r in after)  # balancing acts during the warm-up only (NVAE)
    manifest, _ = read_manifest(tmp_path / "whole", BackboneManifest)
    assert manifest.config.kl_balance and manifest.config.spectral_reg == 0.1


def test_bf16_is_refused_on_the_cpu_before_any_file(tmp_path):
    out = tmp_path / "backbone"
    with pytest.raises(ConfigError, match="bf16.*CUDA"):
        pretrain.run(tiny_pretrain_config(out, **NVAE_TINY, precision="bf16"))
    assert not out.exists()


def test_spelled_out_defaults_keep_the_fingerprint_and_misplaced_options_are_refused(tmp_path):
    plain = tiny_pretrain_config(tmp_path / "b", **NVAE_TINY)
    spelled = tiny_pretrain_config(tmp_path / "b", **NVAE_TINY, likelihood="gaussian", kl_balance=False, spectral_reg=0.0,
                                   precision="fp32")
    assert spelled.hashed_fields() == plain.hashed_fields()
    assert "likelihood" not in plain.hashed_fields()
    assert tiny_pretrain_config(tmp_path / "b", **NVAE_TINY, likelihood="logistic-mixture").mixture_components == 5
    with pytest.raises(ValidationError, match="mixture_components"):
        tiny_pretrain_config(tmp_path / "b", **NVAE_TINY, mixture_components=3)
    with pytest.raises(ValidationError, match="kl_balance"):
        tiny_pretrain_config(tmp_path / "b", prior="joint", free_bits=0.0, kl_balance=True)
