"""The cooperative prior (CDRL in u-space): the 2-D toy with a known density, its initializer alone, resume
equivalence and sampling with fewer steps on the tiny backbone."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hebmctl import priors
from hebmctl.io.state import load_tensors
from hebmctl.models.initializer import Initializer
from hebmctl.schemas import SampleConfig, TrainPriorConfig
from hebmctl.stages import sample, train_prior
from hebmctl.stages.artifacts import load_backbone, open_prior

from tests.conftest import tiny_prior_config
from tests.priors.toy import IdentityBackbone, mixture, mmd_rbf

pytestmark = pytest.mark.usefixtures("single_thread")
CPU = torch.device("cpu")
# T = 6 (drl): with T = 3 the top level's proposal (posterior std 0.96) leaves the initializer alone little to learn.
TOY = dict(scheme="cooperative", T=6, langevin_steps=20, b2=1e-3, width=64, time_embed_dim=32, seed=0)


def train_toy(steps: int = 250) -> priors.CooperativePrior:
    """The cooperative prior trained on the toy by its own training step: one Adam per module, as train-prior does."""
    prior = priors.for_training(TrainPriorConfig(**TOY), IdentityBackbone(), CPU)
    modules = [prior.energy, *prior.extra_modules().values()]
    optimizers = [torch.optim.Adam(m.parameters(), lr=1e-3, betas=(0.5, 0.999)) for m in modules]
    g = torch.Generator().manual_seed(1)
    for _ in range(steps):
        outcome = prior.training_outcome(mixture(256, g), g)
        for opt in optimizers:
            opt.zero_grad()
        (outcome.loss + sum(outcome.extra_losses.values())).backward()
        for opt in optimizers:
            opt.step()
        assert torch.isfinite(outcome.loss) and outcome.stats.is_finite() and set(outcome.extra_losses) == {"initializer"}
    return prior


@pytest.fixture(scope="module")
def toy_prior() -> priors.CooperativePrior:
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return train_toy()
    finally:
        torch.set_num_threads(old)


def with_steps(prior: priors.CooperativePrior, k: int) -> priors.CooperativePrior:
    """The same networks sampled with K' = k steps (the factory's path, as `sample --langevin-steps`)."""
    other = priors.from_energy(prior.config, prior.energy, prior.backbone, CPU, priors.SamplingOptions(langevin_steps=k))
    other.initializer.load_state_dict(prior.initializer.state_dict())
    return other


def _toy_mmds(prior, n=1000):
    g = torch.Generator().manual_seed(5)
    target, base = mixture(n, g), torch.randn(n, 2, generator=g)
    u, stats = prior.draw(n, g)
    assert torch.isfinite(u).all() and all(s.is_finite() for s in stats)
    return mmd_rbf(u, target), mmd_rbf(base, target), u


@pytest.mark.parametrize("k", [20, 7])
def test_cooperative_prior_is_closer_to_the_target_than_the_gaussian(toy_prior, k):
    """K' = K and K' ~ K / 3 (step scaled by sqrt(K / K'))."""
    prior = with_steps(toy_prior, k)
    assert prior.step_size == pytest.approx((20 / k) ** 0.5)
    mmd, base, u = _toy_mmds(prior)
    assert mmd < 0.5 * base, (mmd, base)
    assert abs(u.norm(dim=1).median().item() - 2.0) < 0.2  # on the circle of modes


def test_the_initializer_alone_learned(toy_prior):
    """K' = 0: the samples are the initializer's proposals only (g plus the posterior noise at each level); trained,
    they are closer to the target than N(0, I) (250 steps: MMD 0.356 against 0.432; it keeps improving, 0.30 at 500
    steps: the initializer chases the K-step refinements, so it learns a little per update). An untrained one is no
    reference: it proposes u_{t+1} plus noise, a wider Gaussian that happens to overlap the ring of modes."""
    trained, base, u = _toy_mmds(with_steps(toy_prior, 0))
    assert trained < 0.9 * base, (trained, base)
    assert u.norm(dim=1).median() > torch.randn(1000, 2, generator=torch.Generator().manual_seed(0)).norm(dim=1).median()  # pushed outwards


def test_masked_sampling_keeps_the_fixed_coordinates_exactly(toy_prior):
    u_fixed = mixture(64, torch.Generator().manual_seed(2))
    u = toy_prior.resample_masked(u_fixed, torch.tensor([0.0, 1.0]), torch.Generator().manual_seed(3))
    assert torch.equal(u[:, 0], u_fixed[:, 0])
    assert not torch.allclose(u[:, 1], u_fixed[:, 1]) and torch.isfinite(u).all()


def test_initializer_starts_as_the_identity_and_handles_spatial_groups():
    """Zero-initialised last layers: an untrained g(u_{t+1}, t) = u_{t+1} (the diffusion scheme's chain start);
    vector and spatial groups (an MLP and a conv net) in one flat u."""
    net = Initializer([(3,), (2, 4, 4)], width=8, depth=1, conv_channels=4, conv_depth=1, time_embed_dim=8)
    u = torch.randn(5, 3 + 32, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([0, 1, 2, 0, 1])
    assert torch.equal(net(u, t), u)
    torch.nn.init.normal_(net.groups[1].out.weight)
    out = net(u, t)
    assert torch.equal(out[:, :3], u[:, :3]) and not torch.equal(out[:, 3:], u[:, 3:])  # groups do not mix


def test_tweedie_step_moves_along_the_score(toy_prior):
    u1 = mixture(32, torch.Generator().manual_seed(4))
    u0 = u1 + 0.05 * torch.randn(32, 2, generator=torch.Generator().manual_seed(5))
    moved = toy_prior.tweedie_step(u0, u1)
    sigma0 = float(toy_prior.schedule.sigma_cum[0])
    assert torch.isfinite(moved).all() and 0 < float((moved - u0).abs().max()) < 10 * sigma0


@pytest.fixture(scope="module")
def tiny_cooperative(tiny_backbone, tiny_latents, tmp_path_factory):
    out = tmp_path_factory.mktemp("tiny-cooperative") / "cooperative"
    train_prior.run(tiny_prior_config(tiny_backbone, tiny_latents, out, scheme="cooperative"))
    return out


def test_resume_is_bitwise_equal_for_energy_and_initializer(tiny_backbone, tiny_latents, tiny_cooperative, tmp_path):
    config = tiny_prior_config(tiny_backbone, tiny_latents, tmp_path / "p", scheme="cooperative")
    assert train_prior.run(config, train_prior.RunControl(stop_after=3)) is None  # between checkpoints 2 and 4
    ckpt = sorted((tmp_path / "p" / "checkpoints").iterdir())[-1]
    files = {f.name for f in ckpt.iterdir()}
    assert {"initializer.safetensors", "ema-initializer.safetensors", "optimizer-adam-initializer.safetensors"} <= files
    train_prior.run(config)
    for name in ("energy.safetensors", "initializer.safetensors"):
        resumed, _ = load_tensors(tmp_path / "p" / name)
        straight, _ = load_tensors(tiny_cooperative / name)
        assert resumed.keys() == straight.keys() and all(torch.equal(resumed[k], straight[k]) for k in straight), name


def test_artifact_holds_the_initializer_and_sample_with_fewer_steps_is_finite(tiny_backbone, tiny_cooperative, tmp_path):
    backbone = load_backbone(tiny_backbone, CPU)
    prior, inputs = open_prior(tiny_cooperative, backbone, CPU, priors.SamplingOptions(langevin_steps=1))
    stored, _ = load_tensors(tiny_cooperative / "initializer.safetensors")
    assert isinstance(prior, priors.CooperativePrior) and [r.role for r in inputs] == ["prior"]
    assert all(torch.equal(prior.initializer.state_dict()[k], stored[k]) for k in stored)
    assert any(float(v.abs().max()) > 0 for k, v in stored.items() if k.endswith("out.weight"))  # trained away from zero
    manifest = sample.run(SampleConfig(backbone=tiny_backbone, prior=str(tiny_cooperative), out=tmp_path / "s", n=10, batch_size=4,
                                       langevin_steps=1, hierarchical=True, device="cpu"))
    images = np.load(tmp_path / "s" / "images.npz", allow_pickle=False)["images"]
    assert images.shape == (10, 28, 28, 1) and np.isfinite(images.astype(np.float32)).all() and images.std() > 0
    assert manifest.prior_kind == "cooperative" and manifest.sampler["step_scale"] == pytest.approx(3**0.5)  # sqrt(K / K')
    assert manifest.sampler["initializer"] is True
