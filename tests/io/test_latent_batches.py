import numpy as np
import torch

from hebmctl.io.latent_batches import LatentBatches
from hebmctl.io.latent_store import LatentLayout, LatentWriter


def _cache(path, n=50, s=3, d=5):
    u0 = np.random.default_rng(0).normal(size=(n, s, d)).astype(np.float32)
    layout = LatentLayout(n_rows=n, samples_per_image=s, group_dims=(3, 2), group_names=("z1", "z2"), rows_per_chunk=8)
    with LatentWriter(path, layout, "b" * 64, "f") as writer:
        writer.write(0, u0, np.zeros(n, np.int64), np.arange(n))
        writer.commit()
    return u0


def test_streamed_batches_equal_in_memory_batches(tmp_path):
    u0 = _cache(tmp_path / "train.h5")
    memory = LatentBatches(tmp_path / "train.h5", torch.device("cpu"), seed=3)
    streamed = LatentBatches(tmp_path / "train.h5", torch.device("cpu"), seed=3, in_memory_limit_bytes=0)
    assert memory.in_memory and not streamed.in_memory and len(memory) == 150
    for step in (0, 1, 7):
        a, b = memory.batch(step, 64), streamed.batch(step, 64)
        assert torch.equal(a, b)
        # every row is one of the cached samples
        flat = torch.from_numpy(u0.reshape(-1, 5))
        assert all((flat == row).all(dim=1).any() for row in a)
    assert not torch.equal(memory.batch(0, 64), memory.batch(1, 64))
