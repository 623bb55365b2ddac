import json
import shutil

import pytest
import torch

from hebmctl.errors import DivergenceError, LineageError
from hebmctl.io.manifest import read_manifest
from hebmctl.io.state import load_tensors
from hebmctl.schemas import PriorManifest
from hebmctl.stages import pretrain, train_prior
from hebmctl.stages.artifacts import load_backbone, load_prior

from tests.conftest import tiny_pretrain_config, tiny_prior_config


@pytest.mark.parametrize("scheme", ["joint", "diffusion"])
def test_prior_manifest_records_every_number(tiny_priors, scheme):
    manifest, _ = read_manifest(tiny_priors[scheme], PriorManifest)
    assert manifest.config.scheme == scheme and manifest.config.langevin_steps == 3
    assert {r.role for r in manifest.inputs} == {"backbone", "latents"}
    if scheme == "diffusion":
        assert manifest.schedule["name"] == "drl" and len(manifest.schedule["alpha"]) == 4
        # DESIGN §3 (Diff-EBM's anchor): s_t^2 = (sigma_cum[t] / sigma_cum[0]) * b2 * sigma[t+1]^2, from the drl
        # schedule's published alphas for T = 3 (recomputed here, not read back from the code under test).
        alpha = torch.tensor([0.99995, 0.72213, 0.38627, 0.02278], dtype=torch.float64)
        sigma, sigma_cum = (1 - alpha**2).sqrt(), (1 - torch.cumprod(alpha**2, 0)).sqrt()
        expected = ((sigma_cum[:-1] / sigma_cum[0]) * manifest.config.b2 * sigma[1:] ** 2).sqrt()
        assert manifest.step_sizes == pytest.approx(expected.tolist(), rel=2e-3)
        assert manifest.schedule["alpha"] == pytest.approx(alpha.tolist(), abs=1e-5)
    else:
        assert manifest.schedule is None and manifest.step_sizes == pytest.approx([0.1])
        assert manifest.config.energy_l2 == 0.1
    lines = [json.loads(x) for x in (tiny_priors[scheme] / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == [1, 2, 3, 4, 5, 6] and all("energy_gap" in r for r in lines)
    assert manifest.metrics["rollbacks"] == []
    prior = load_prior(tiny_priors[scheme], load_backbone(manifest.config.backbone, torch.device("cpu")), torch.device("cpu"))
    assert not any(p.requires_grad for p in prior.energy.parameters())


def test_train_prior_resume_is_exact(tiny_backbone, tiny_latents, tiny_priors, tmp_path):
    config = tiny_prior_config(tiny_backbone, tiny_latents, tmp_path / "p", scheme="diffusion")
    assert train_prior.run(config, train_prior.RunControl(stop_after=4)) is None
    train_prior.run(config)
    resumed, _ = load_tensors(tmp_path / "p" / "energy.safetensors")
    straight, _ = load_tensors(tiny_priors["diffusion"] / "energy.safetensors")
    assert all(torch.equal(resumed[k], straight[k]) for k in straight)


def test_latents_from_another_backbone_are_refused(tiny_backbone, tiny_latents, tmp_path):
    other = tmp_path / "other-backbone"
    pretrain.run(tiny_pretrain_config(other, seed=1))
    with pytest.raises(LineageError, match="manifest hash") as info:
        train_prior.run(tiny_prior_config(other, tiny_latents, tmp_path / "p"))
    assert not (tmp_path / "p").exists()
    # The advice names the stage that remakes the latents, not a --force of this one.
    assert f"hebmctl cache-latents --backbone {other} --out {tiny_latents} --force" in str(info.value)


def test_divergence_rolls_back_then_stops_with_a_clear_error(tiny_backbone, tiny_latents, tmp_path):
    """A huge learning rate with a huge step blows the chains up: rollbacks are recorded, then it stops."""
    config = tiny_prior_config(tiny_backbone, tiny_latents, tmp_path / "p", scheme="joint", lr=1e30, step_size=1e6, max_rollbacks=2,
                               steps=20)
    with pytest.raises(DivergenceError, match="rollbacks"):
        train_prior.run(config)
    assert not (tmp_path / "p" / "manifest.json").exists()


def test_up_to_date_prior_is_skipped(tiny_backbone, tiny_latents, tiny_priors, tmp_path):
    folder = tmp_path / "copy"
    shutil.copytree(tiny_priors["joint"], folder)
    before = (folder / "manifest.json").read_bytes()
    train_prior.run(tiny_prior_config(tiny_backbone, tiny_latents, folder, scheme="joint"))
    assert (folder / "manifest.json").read_bytes() == before


def test_runaway_energy_gap_counts_as_divergence(tiny_backbone, tiny_latents, tmp_path):
    """A finite but exploding gap (here: any gap above a tiny threshold) triggers rollbacks, then a stop."""
    config = tiny_prior_config(tiny_backbone, tiny_latents, tmp_path / "p", scheme="joint", max_energy_gap=1e-9, max_rollbacks=1)
    with pytest.raises(DivergenceError, match="max-energy-gap"):
        train_prior.run(config)


def test_runaway_guard_compares_the_gap_in_the_diffusion_loss_units(tiny_backbone, tiny_latents, tmp_path):
    """Diffusion: the guard compares mean((G_pos - G_neg) / s_t^2), the quantity the loss uses; the raw G gap is
    s_t^2 (1e-5 .. 3e-3) times smaller, so a threshold between the two fires now and never fired before."""
    probe = tiny_prior_config(tiny_backbone, tiny_latents, tmp_path / "probe", scheme="diffusion", max_energy_gap=1e30)
    assert train_prior.run(probe, train_prior.RunControl(stop_after=1)) is None
    record = json.loads((tmp_path / "probe" / "metrics.jsonl").read_text().splitlines()[0])
    assert record["loss_gap"] == pytest.approx(-record["loss"], rel=1e-5)  # no energy L2 for diffusion: loss = -gap
    raw, scaled = abs(record["energy_gap"]), abs(record["loss_gap"])
    assert scaled > 100 * raw
    config = tiny_prior_config(tiny_backbone, tiny_latents, tmp_path / "p", scheme="diffusion", max_energy_gap=(raw * scaled) ** 0.5,
                               max_rollbacks=0)
    with pytest.raises(DivergenceError, match="max-energy-gap"):
        train_prior.run(config)


def test_a_damaged_metrics_log_is_restored_from_the_checkpoint(tiny_backbone, tiny_latents, tmp_path):
    """The manifest's final_energy_gap is the mean of the log's last lines: a digit changed in the log (a fault drill)
    was re-run as 'damaged' and then taken into the new manifest. Now the log comes back from the checkpoint's copy."""
    folder = tmp_path / "prior"
    config = tiny_prior_config(tiny_backbone, tiny_latents, folder, scheme="joint")
    first = train_prior.run(config)
    log = folder / "metrics.jsonl"
    original = log.read_bytes()
    last_gap = f'"energy_gap": {json.loads(original.splitlines()[-1])["energy_gap"]}'.encode()
    log.write_bytes(original.replace(last_gap, last_gap[:-1] + (b"1" if last_gap[-1:] != b"1" else b"2")))
    again = train_prior.run(config)  # the manifest's sha256 of the log differs: repaired, resuming from the last checkpoint
    assert log.read_bytes() == original
    assert again.metrics["final_energy_gap"] == first.metrics["final_energy_gap"]


class _HostReads(torch.overrides.TorchFunctionMode):
    """Counts the tensor methods that read a value on the host (on a GPU each is a device sync)."""

    READS = {torch.Tensor.__bool__, torch.Tensor.__float__, torch.Tensor.__int__, torch.Tensor.__index__, torch.Tensor.item,
             torch.Tensor.tolist, torch.Tensor.numpy, torch.Tensor.cpu}

    def __init__(self) -> None:
        super().__init__()
        self.names: list[str] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func in self.READS:
            self.names.append(func.__name__)
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("scheme", ["joint", "diffusion", "cooperative"])
def test_an_update_reads_its_loss_and_statistics_in_one_transfer(tiny_backbone, tiny_latents, tmp_path, scheme):
    """Issue 13: the Langevin chains, the loss and every logged statistic of an update stay on the device until one
    `tolist` (the divergence check needs them on the host); a `float()` or `bool()` per statistic would be a device
    sync each on a GPU. The grad norm is read only on the lines that are logged."""
    config = tiny_prior_config(tiny_backbone, tiny_latents, tmp_path / "p", scheme=scheme)
    device = torch.device("cpu")
    trainer = train_prior._PriorTrainer(config, load_backbone(tiny_backbone, device),
                                        train_prior.LatentBatches(tiny_latents / "train.h5", device, config.seed), device, "f" * 64)
    u0 = trainer.data.batch(0, config.batch_size, trainer.shard)
    with _HostReads() as reads:
        loss, record = trainer.negatives_and_loss(u0)
    assert loss is not None and reads.names == ["tolist"], reads.names
    assert {"loss", "energy_gap", "loss_gap", "langevin_grad_norm"} <= record.keys()
    assert all(isinstance(value, float) for value in record.values())


def test_lr_decay_steps_once_per_epoch_and_resumes(tiny_backbone, tiny_latents, tmp_path):
    """Diff-EBM's recipe: lr * gamma^epoch. 300 cached latents at batch 100 make an epoch of 3 updates, so updates 1-3 use
    lr, 4-6 lr * gamma, 7 lr * gamma^2; a run stopped at 5 and resumed continues the same schedule, bit for bit."""
    settings = dict(scheme="diffusion", steps=7, batch_size=100, lr=1e-3, lr_decay=0.5, weight_decay=3e-5)
    straight = tiny_prior_config(tiny_backbone, tiny_latents, tmp_path / "straight", **settings)
    train_prior.run(straight)
    lines = [json.loads(x) for x in (tmp_path / "straight" / "metrics.jsonl").read_text().splitlines()]
    assert [r["lr"] for r in lines] == pytest.approx([1e-3] * 3 + [5e-4] * 3 + [2.5e-4])
    resumed = tiny_prior_config(tiny_backbone, tiny_latents, tmp_path / "resumed", **settings)
    assert train_prior.run(resumed, train_prior.RunControl(stop_after=5)) is None
    train_prior.run(resumed)
    a, _ = load_tensors(tmp_path / "straight" / "energy.safetensors")
    b, _ = load_tensors(tmp_path / "resumed" / "energy.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_weight_decay_reaches_the_optimizer_and_the_fingerprint(tiny_backbone, tiny_latents, tiny_priors, tmp_path):
    """Unset, the new options leave old priors' fingerprints alone; set, they change the identity and the weights."""
    plain = tiny_prior_config(tiny_backbone, tiny_latents, tmp_path / "plain", scheme="diffusion")
    decayed = tiny_prior_config(tiny_backbone, tiny_latents, tmp_path / "decayed", scheme="diffusion", weight_decay=10.0)
    manifest, _ = read_manifest(tiny_priors["diffusion"], PriorManifest)
    assert plain.hashed_fields() == manifest.config.hashed_fields()
    assert "weight_decay" not in plain.hashed_fields() and decayed.hashed_fields()["weight_decay"] == 10.0
    train_prior.run(decayed)
    # A weight decay of 10 adds 10 * w to every gradient, so Adam's first steps shrink each weight toward 0.
    before = sum(v.abs().sum() for v in load_tensors(tiny_priors["diffusion"] / "energy.safetensors")[0].values())
    after = sum(v.abs().sum() for v in load_tensors(tmp_path / "decayed" / "energy.safetensors")[0].values())
    assert after < before
