"""The test helper that runs a function on real gloo processes."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist

from tests.worker.distributed import run_distributed


def _all_reduce_rank(rank: int, world_size: int, scale: int) -> torch.Tensor:
    t = torch.tensor([float(rank * scale)])
    dist.all_reduce(t)
    return t


def _fail_on_rank_one(rank: int, world_size: int) -> None:
    # Rank 0 then fails too, in the helper's closing barrier ("connection closed"),
    # and may be noticed first: the helper must still report rank 1's own error.
    if rank == 1:
        raise RuntimeError("rank one fails on purpose")


def test_results_come_back_per_rank() -> None:
    results = run_distributed(_all_reduce_rank, 3, 2, timeout=60)
    assert [r.item() for r in results] == [6.0, 6.0, 6.0]


def test_an_exception_in_one_rank_fails_with_its_traceback() -> None:
    with pytest.raises(Exception, match="rank one fails on purpose"):
        run_distributed(_fail_on_rank_one, 2, timeout=60)
