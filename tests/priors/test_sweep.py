"""The batched sweep (issue 13 item 2): prior i of a sweep equals the same prior trained alone by train-prior."""

from __future__ import annotations

import pytest
import torch

from hebmctl.errors import ConfigError
from hebmctl.io.state import load_tensors
from hebmctl.models.hvae import HierarchicalVAE
from hebmctl.priors.sweep import DiffusionSweep
from hebmctl.schemas.prior import TrainPriorConfig
from hebmctl.stages import train_prior, train_prior_sweep

from tests.conftest import tiny_prior_config

pytestmark = pytest.mark.usefixtures("single_thread")

SEEDS = (0, 1, 2)
ATOL = 1e-5
"""Absolute tolerance on the EMA weights (values of order 0.1-1) after 4 updates. The sweep's arithmetic is the lone
prior's, in the same order, with every random draw from the prior's own generator; only the matrix products differ
(batched over the priors by vmap instead of one GEMM per prior), which may round differently in the last float32
bits, and the Langevin chains carry such differences along. Measured: 1.5e-8 (2-core CPU, 1 torch thread); a
prior with another seed differs by more than 100 x ATOL."""


def test_batched_priors_equal_the_priors_trained_alone(tiny_backbone, tiny_latents, tmp_path):
    settings = dict(scheme="diffusion", steps=4, log_every=2)
    configs = [tiny_prior_config(tiny_backbone, tiny_latents, tmp_path / f"sweep{s}", seed=s, **settings) for s in SEEDS]
    swept = train_prior_sweep.run(configs)
    worst = 0.0
    for seed, manifest in zip(SEEDS, swept, strict=True):
        alone = train_prior.run(tiny_prior_config(tiny_backbone, tiny_latents, tmp_path / f"alone{seed}", seed=seed, **settings))
        assert manifest.fingerprint == alone.fingerprint and manifest.metrics["batched_sweep"]["priors"] == len(SEEDS)
        a, _ = load_tensors(tmp_path / f"sweep{seed}" / "energy.safetensors")
        b, _ = load_tensors(tmp_path / f"alone{seed}" / "energy.safetensors")
        assert a.keys() == b.keys()
        worst = max(worst, max(float((a[k] - b[k]).abs().max()) for k in a))
    assert worst <= ATOL, f"largest difference {worst:.3g}"
    other, _ = load_tensors(tmp_path / "alone1" / "energy.safetensors")
    mine, _ = load_tensors(tmp_path / "sweep0" / "energy.safetensors")
    assert max(float((other[k] - mine[k]).abs().max()) for k in mine) > 100 * ATOL  # the comparison can fail
    print(f"sweep vs alone: largest |difference| {worst:.3g}")
    # Up to date: a second run trains nothing and returns the same manifests.
    assert [m.fingerprint for m in train_prior_sweep.run(configs)] == [m.fingerprint for m in swept]


def test_a_sweep_refuses_priors_that_cannot_share_one_computation(tiny_backbone, tiny_latents, tmp_path):
    joint = [tiny_prior_config(tiny_backbone, tiny_latents, tmp_path / f"j{s}", scheme="joint", seed=s) for s in SEEDS]
    with pytest.raises(ConfigError, match="diffusion"):
        train_prior_sweep.run(joint)
    mixed = [tiny_prior_config(tiny_backbone, tiny_latents, tmp_path / f"m{w}", scheme="diffusion", width=w) for w in (8, 16)]
    with pytest.raises(ConfigError, match="width"):
        train_prior_sweep.run(mixed)
    decayed = [tiny_prior_config(tiny_backbone, tiny_latents, tmp_path / f"d{s}", scheme="diffusion", seed=s,
                                 lr_decay=0.9 if s else None) for s in SEEDS]
    with pytest.raises(ConfigError, match="--lr-decay"):
        train_prior_sweep.run(decayed)
    assert not (tmp_path / "j0").exists()  # refused before any folder was made


def test_the_sweeps_static_step_without_capture_gives_the_eager_numbers():
    """The buffers a captured sweep step replays on (prior i's noise drawn into its rows from its own generator) give
    bitwise the eager sweep's weights; two different backbones, two updates."""
    backbones = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        backbones.append(HierarchicalVAE((28, 28, 1), (8, 4, 2), channels=8, mlp_hidden=16).eval().requires_grad_(False))
    configs = [TrainPriorConfig(run=f"r{s}", scheme="diffusion", seed=s, width=16, depth=1, langevin_steps=3, batch_size=8) for s in (0, 1)]
    weights = {}
    for static in (False, True):
        sweep = DiffusionSweep(configs, backbones, torch.device("cpu"))
        sweep.use_static = static
        u0 = torch.randn(2, 8, backbones[0].latent_dim, generator=torch.Generator().manual_seed(5))
        for step in range(2):
            sweep.update(u0, step)
        weights[static] = [sweep.energy_state(i) for i in range(2)]
    assert all(torch.equal(a[k], b[k]) for a, b in zip(weights[False], weights[True], strict=True) for k in a)


def test_cli_sweep_writes_the_priors_train_prior_then_finds_up_to_date(tiny_backbone, tiny_latents, tmp_path):
    from typer.testing import CliRunner

    from hebmctl.cli import app

    runs = [tmp_path / "a", tmp_path / "b"]
    common = ["--backbone", str(tiny_backbone), "--latents", str(tiny_latents), "--width", "16", "--depth", "1", "--steps", "2",
              "--batch-size", "32", "--langevin-steps", "3", "--device", "cpu"]
    result = CliRunner().invoke(app, ["train-prior-sweep", *map(str, runs), "--seeds", "3,4", *common])
    assert result.exit_code == 0, result.output
    assert all((run / "priors" / "diffusion" / "manifest.json").is_file() for run in runs)
    again = CliRunner().invoke(app, ["train-prior", "--run", str(runs[1]), "--seed", "4", *common])
    assert again.exit_code == 0 and "up to date" in again.output
    wrong = CliRunner().invoke(app, ["train-prior-sweep", *map(str, runs), "--seeds", "3", *common])
    assert wrong.exit_code == 2 and "one per run" in " ".join(wrong.output.split())
