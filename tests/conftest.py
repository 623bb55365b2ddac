"""Shared fixtures: paths to the real data sets, and a tiny backbone trained once per session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
REQUIRE_DATA_ENV = "HEBMCTL_REQUIRE_DATA"
"""Set to 1 by .ci/run: a test whose real data set is missing then fails instead of skipping."""


def shared_data(*parts: str) -> Path:
    """The path ``../shared/data/<parts>`` for a test that needs a real data set.

    Missing: the test fails when ``HEBMCTL_REQUIRE_DATA=1`` (CI), else it is skipped with a reason
    that names the path (listed in the report header and by ``pytest -rs``).
    """
    path = SHARED_DATA.joinpath(*parts)
    if path.exists():
        return path
    message = f"real data set {path} not found (expected ../shared/data next to the repo, see its README)"
    if os.environ.get(REQUIRE_DATA_ENV) == "1":
        pytest.fail(f"{message}; {REQUIRE_DATA_ENV}=1 requires it", pytrace=False)
    pytest.skip(message)


def pytest_report_header(config) -> str:
    state = "found" if SHARED_DATA.is_dir() else "MISSING: tests that need it are skipped (set HEBMCTL_REQUIRE_DATA=1 to fail instead)"
    return f"hebmctl real data sets at {SHARED_DATA}: {state}; {REQUIRE_DATA_ENV}={os.environ.get(REQUIRE_DATA_ENV, 'unset')}"

torch.set_num_threads(2)


@pytest.fixture
def single_thread():
    """For tests on tiny tensors: one intra-op thread is faster than two, and far faster when the
    2 cores are shared (OpenMP spin-waits made toy training 10-15x slower with 2 threads)."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def tiny_pretrain_config(out: Path, **overrides):
    """A backbone small enough to train in a few seconds on 2 CPU cores, on real digits."""
    from hebmctl.schemas import PretrainConfig

    settings = dict(
        out=out, data="builtin:mnist-10k", limit=512, eval_limit=128, latent_dims=(8, 4, 2), channels=8,
        mlp_hidden=32, steps=12, batch_size=32, kl_warmup_steps=4, checkpoint_every=4, log_every=2, device="cpu",
    )
    return PretrainConfig(**(settings | overrides))


@pytest.fixture(scope="session")
def tiny_backbone(tmp_path_factory) -> Path:
    """Folder of a complete tiny backbone (read-only for tests: copy it before changing anything)."""
    from hebmctl.stages import pretrain

    out = tmp_path_factory.mktemp("tiny") / "backbone"
    pretrain.run(tiny_pretrain_config(out))
    return out


@pytest.fixture(scope="session")
def tiny_latents(tiny_backbone, tmp_path_factory) -> Path:
    """Latent cache of the tiny backbone (300 train / 300 test images)."""
    from hebmctl.schemas import CacheLatentsConfig
    from hebmctl.stages import cache_latents

    out = tmp_path_factory.mktemp("tiny-latents") / "latents"
    cache_latents.run(CacheLatentsConfig(backbone=tiny_backbone, out=out, limit=300, device="cpu"))
    return out


def tiny_prior_config(backbone: Path, latents: Path, out: Path, **overrides):
    from hebmctl.schemas import TrainPriorConfig

    settings = dict(backbone=backbone, latents=latents, out=out, width=16, depth=1, steps=6, batch_size=32, langevin_steps=3,
                    checkpoint_every=2, log_every=1, device="cpu")
    return TrainPriorConfig(**(settings | overrides))


@pytest.fixture(scope="session")
def tiny_priors(tiny_backbone, tiny_latents, tmp_path_factory) -> dict[str, Path]:
    """A trained tiny prior of each scheme."""
    from hebmctl.stages import train_prior

    root = tmp_path_factory.mktemp("tiny-priors")
    out = {}
    for scheme in ("joint", "diffusion"):
        out[scheme] = root / scheme
        train_prior.run(tiny_prior_config(tiny_backbone, tiny_latents, out[scheme], scheme=scheme))
    return out
