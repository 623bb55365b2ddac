"""hebmctl.dist: row shards, and every collective run by 2 real processes (gloo on the CPU)."""

from __future__ import annotations

import json

import pytest
import torch

from hebmctl import dist
from hebmctl.errors import HebmctlError

from tests.ddp_launch import REPO, run_ranks


def _world(monkeypatch, rank: int, size: int) -> None:
    monkeypatch.setenv("RANK", str(rank))
    monkeypatch.setenv("WORLD_SIZE", str(size))


def test_one_process_is_the_plain_operation(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.delenv("RANK", raising=False)
    x = torch.randn(5, 3, generator=torch.Generator().manual_seed(0))
    assert dist.world_size() == 1 and dist.is_main() and dist.shard(7, 4) == (0, 7)
    assert torch.equal(dist.batch_mean(x), x.mean(0)) and torch.equal(dist.global_mean(x), x.mean())
    assert dist.init(torch.device("cpu")) == torch.device("cpu") and not torch.distributed.is_initialized()
    assert dist.main_decides(lambda: 3) == 3 and dist.broadcast_json([1]) == [1]


@pytest.mark.parametrize("size, expected", [
    (2, [(0, 8), (8, 10)]),  # 3 batches of 4 (the last one short): 2 + 1
    (3, [(0, 4), (4, 8), (8, 10)]),
    (4, [(0, 4), (4, 8), (8, 10), (10, 10)]),  # more ranks than batches: the last gets none
])
def test_shards_are_contiguous_whole_batches_in_rank_order(monkeypatch, size, expected):
    for rank in range(size):
        _world(monkeypatch, rank, size)
        assert dist.shard(10, 4) == expected[rank]
    assert dist.shards(10, 4) == expected


def test_a_stage_without_multi_process_support_refuses_clearly(monkeypatch):
    _world(monkeypatch, 0, 2)  # started by torchrun, but no process group was joined
    with pytest.raises(HebmctlError, match="only pretrain, cache-latents, train-prior, sample, eval fid run with several processes"):
        dist.main_decides(lambda: pytest.fail("rank 0 must not touch anything"))


def test_collectives_on_two_processes(tmp_path):
    run_ranks([str(REPO / "tests" / "dist_worker.py"), str(tmp_path)])
    seen = [json.loads((tmp_path / f"rank-{r}.json").read_text()) for r in range(2)]
    assert [s["shard"] for s in seen] == [[0, 8], [8, 10]]
    assert seen[0]["gathered"] == seen[1]["gathered"] == [[0, 1], [2, 3], [4, 5]]
    assert seen[0]["mean"] == seen[1]["mean"] == 2.0
    assert seen[0]["grad"] == pytest.approx([1 / 3, 1 / 3]) and seen[1]["grad"] == pytest.approx([1 / 3])
    assert seen[0]["summed_grad"] == seen[1]["summed_grad"] == [3.0, 6.0]
    assert seen[0]["broadcast"] == seen[1]["broadcast"] == {"from": 0}
    assert seen[0]["decided"] == seen[1]["decided"] == "rank 0's choice"
    assert seen[0]["error"] == seen[1]["error"] == "the folder is taken"  # rank 0's error stops rank 1 too
    assert seen[0]["first_error"] == seen[1]["first_error"] == "Rank 1 of 2: the chains diverged"  # rank 1's error, said by rank 0
    assert all("only pretrain, cache-latents, train-prior, sample, eval fid" in s["next_stage"] for s in seen)
    # the group really ended (its threads joined) before exit, so none can abort the interpreter's shutdown (the
    # rank-1 SIGABRT of test_ddp); None where the platform has no /proc/self/task
    assert all(s["threads_after_leave"] in ([], None) for s in seen), [s["threads_after_leave"] for s in seen]
