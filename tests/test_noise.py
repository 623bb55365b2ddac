"""hebmctl.noise: a shard's draws are its rows of the whole batch's draws, and its generator advances alike."""

from __future__ import annotations

import torch

from hebmctl import noise
from hebmctl.noise import NoiseRows
from hebmctl.samplers import forward_pairs, langevin, make_schedule


def test_a_generator_draws_the_plain_torch_values():
    a, b = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    assert torch.equal(noise.randn((4, 3), a), torch.randn((4, 3), generator=b))
    assert torch.equal(noise.randint(7, (9,), a), torch.randint(7, (9,), generator=b))


def test_shards_get_their_rows_of_the_batch_and_advance_their_generators_alike():
    whole = torch.Generator().manual_seed(1)
    want = [noise.randn((10, 3), whole), noise.randint(4, (10,), whole)]
    for start, stop in [(0, 7), (7, 10)]:
        rows = NoiseRows(torch.Generator().manual_seed(1), start, stop, 10)
        got = [noise.randn((stop - start, 3), rows), noise.randint(4, (stop - start,), rows)]
        assert torch.equal(got[0], want[0][start:stop]) and torch.equal(got[1], want[1][start:stop])
        assert torch.equal(rows.generator.get_state(), whole.get_state())


def test_a_langevin_chain_on_a_shard_is_the_shard_of_the_batch_chain():
    """Rows act independently (a per-row log density), so each shard's chain is the whole chain's rows, bit for bit."""
    u = torch.randn(6, 4, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([0, 1, 2, 0, 1, 2])
    schedule = make_schedule("cosine", 3)

    def log_p(x):
        return -(x**2).sum(1)

    def run(rows, gen):
        u_t, u_next = forward_pairs(u[rows], t[rows], schedule, gen)
        return langevin(log_p, u_next, 3, 0.1, gen)[0], u_t

    whole = run(slice(0, 6), torch.Generator().manual_seed(2))
    for a, b in [(0, 4), (4, 6)]:
        shard = run(slice(a, b), NoiseRows(torch.Generator().manual_seed(2), a, b, 6))
        assert torch.equal(shard[0], whole[0][a:b]) and torch.equal(shard[1], whole[1][a:b])
