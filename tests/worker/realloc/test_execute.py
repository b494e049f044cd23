"""Reallocation with real gloo processes: every destination shard is bit-exact."""

from __future__ import annotations

import random
from typing import Any

import pytest

from rlhf_worker.realloc.plan import bytes_received, plan_reallocation
from tests.worker.distributed import run_distributed
from tests.worker.realloc.cases import MODELS, random_pairs, reference_weights, slices

WORLD = 8
PAIRS = 60


def _check_pairs(rank: int, world: int, seed: int, count: int) -> dict[str, int]:
    import torch

    from rlhf_worker.realloc.execute import MemoryStats, reallocate

    rng = random.Random(seed + 1)
    full_by_model = {name: reference_weights(model, seed) for name, model in MODELS.items()}
    checked = {"pairs_here": 0, "tensors": 0, "received": 0}
    for name, src, dst in random_pairs(seed, count, world):
        model = MODELS[name]
        full: dict[str, Any] = full_by_model[name]
        # Small buckets so pieces get cut, packed and sent alone; nodes of 2 or 4 ranks.
        bucket = rng.choice([256, 1024, 4096, 1 << 20])
        plan = plan_reallocation(model, src, dst, rng.choice([2, 4]), bucket_bytes=bucket)
        alias = rng.random() < 0.3
        inflight = rng.choice([1, 2, 4])
        use_into = rng.random() < 0.2  # every rank draws the same numbers, in the same order
        if rank not in src.ranks and rank not in dst.ranks:
            assert reallocate(plan, None, rank, dtype=torch.float32) is None
            continue
        local = None
        if rank in src.ranks:
            local = {
                n: full[n][slices(region)].clone() for n, region in plan.src_shards[rank].items()
            }
        # Sometimes fill existing tensors (garbage-filled) instead of new ones.
        into = None
        if rank in dst.ranks and use_into:
            into = {
                n: torch.full([b - a for a, b in r], float("nan"))
                for n, r in plan.dst_shards[rank].items()
            }
        stats = MemoryStats()
        out = reallocate(
            plan,
            local,
            rank,
            dtype=torch.float32,
            alias_local=alias,
            into=into,
            max_inflight_steps=inflight,
            stats=stats,
        )
        checked["pairs_here"] += 1
        if rank not in dst.ranks:
            assert out is None
            continue
        assert out is not None
        assert set(out) == set(plan.dst_shards[rank]), (name, src, dst)
        for n, region in plan.dst_shards[rank].items():
            expected = full[n][slices(region)]
            assert out[n].shape == expected.shape, (n, src, dst)
            assert torch.equal(out[n], expected), (n, src, dst, rank)
            checked["tensors"] += 1
            if into is not None:
                assert out[n] is into[n]
        # Memory: destination shards plus the buffer limit (two buckets) and one more step.
        biggest = max((b.nbytes for b in plan.buckets), default=0)
        assert stats.peak <= stats.destination + 2 * bucket + 2 * biggest
        checked["received"] += bytes_received(plan)[rank]
    return checked


@pytest.mark.timeout(300)
def test_random_layout_pairs_reallocate_bit_exactly() -> None:
    results = run_distributed(_check_pairs, WORLD, 0, PAIRS)
    assert sum(r["tensors"] for r in results) > 1000
    assert sum(r["received"] for r in results) > 0
    assert all(r["pairs_here"] > 0 for r in results)
