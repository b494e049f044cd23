"""Reallocation with real gloo processes: every destination shard is bit-exact."""

from __future__ import annotations

import random
from typing import Any

import pytest

from rlhf_operator.contract.sharding import Layout
from rlhf_worker.realloc.plan import bytes_received, bytes_sent, plan_reallocation
from tests.worker.distributed import run_distributed
from tests.worker.realloc.cases import MODELS, random_pairs, reference_weights, slices

WORLD = 8
PAIRS = 60


def _check_pairs(rank: int, world: int, seed: int, count: int) -> dict[str, int]:
    import torch

    from rlhf_worker.model.storage import in_storage_order
    from rlhf_worker.realloc.copies import house
    from rlhf_worker.realloc.execute import MemoryStats, local_copies, reallocate
    from rlhf_worker.realloc.pool import StoragePool

    rng = random.Random(seed + 1)
    # One pool across pairs: destinations reuse the (stale) memory of earlier ones.
    pool = StoragePool(limit_bytes=1 << 20)
    full_by_model = {name: reference_weights(model, seed) for name, model in MODELS.items()}
    checked = {"pairs_here": 0, "tensors": 0, "received": 0, "pooled": 0, "housed": 0, "views": 0}
    for name, src, dst in random_pairs(seed, count, world):
        model = MODELS[name]
        full: dict[str, Any] = full_by_model[name]
        # Small buckets so pieces get cut, packed and sent alone; nodes of 2 or 4 ranks.
        bucket = rng.choice([256, 1024, 4096, 1 << 20])
        plan = plan_reallocation(model, src, dst, rng.choice([2, 4]), bucket_bytes=bucket)
        cm = plan.column_major
        alias = rng.random() < 0.3
        inflight = rng.choice([1, 2, 4])
        use_into = rng.random() < 0.2  # every rank draws the same numbers, in the same order
        use_pool = rng.random() < 0.5
        # Sources in the worker's memory order (column-major row-parallel weights), or
        # all row-major: either way the bytes on the wire are the same.
        in_order = rng.random() < 0.5
        in_place = rng.random() < 0.3  # sources kept inside their destinations' buffers
        if rank not in src.ranks and rank not in dst.ranks:
            assert reallocate(plan, None, rank, dtype=torch.float32) is None
            continue
        local = None
        if rank in src.ranks:
            local = {
                n: in_storage_order(full[n][slices(region)].clone(), in_order and n in cm)
                for n, region in plan.src_shards[rank].items()
            }
        # Sometimes fill existing tensors (garbage-filled) instead of new ones.
        into = None
        if rank in dst.ranks and use_into:
            into = {
                n: torch.full([b - a for a, b in r], float("nan"))
                for n, r in plan.dst_shards[rank].items()
            }
        housings = {}
        if in_place and local is not None:
            housings = house(local, plan, rank)
            into = {**(into or {}), **housings}
            for n, region in plan.src_shards[rank].items():  # moved, not changed
                assert torch.equal(local[n], full[n][slices(region)]), (n, src, dst)
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
            pool=pool if use_pool else None,
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
            if into is not None and n in into:
                assert out[n] is into[n]
        # A housed source is in place: it is part of its destination, and no local copy
        # reads it. Every local copy made is counted.
        storage = {n: t.untyped_storage().data_ptr() for n, t in out.items()}
        copies = local_copies(plan, rank, local, out)
        copied_from = {source.untyped_storage().data_ptr() for _, source in copies}
        for n in housings:
            assert local is not None and local[n].untyped_storage().data_ptr() == storage[n]
            assert storage[n] not in copied_from
            checked["housed"] += 1
        assert stats.local_copy_bytes == sum(target.numel() * 4 for target, _ in copies)
        if alias and local is not None:
            for n, _ in plan.program(rank).views:
                if n not in (into or {}):  # a view of the source shard, not a copy of it
                    assert storage[n] == local[n].untyped_storage().data_ptr()
                    checked["views"] += 1
        # Memory: destination shards plus the buffer limit (two buckets) and one more step.
        biggest = max((b.nbytes for b in plan.buckets), default=0)
        assert stats.peak <= stats.destination + 2 * bucket + 2 * biggest
        checked["received"] += bytes_received(plan)[rank]
        if use_pool:
            checked["pooled"] += pool.give_unshared(out, local)
    checked["reused"] = pool.reused_bytes
    return checked


@pytest.mark.timeout(300)
def test_random_layout_pairs_reallocate_bit_exactly() -> None:
    results = run_distributed(_check_pairs, WORLD, 0, PAIRS)
    assert sum(r["tensors"] for r in results) > 1000
    assert sum(r["received"] for r in results) > 0
    assert all(r["pairs_here"] > 0 for r in results)
    assert sum(r["pooled"] for r in results) > 0 and sum(r["reused"] for r in results) > 0
    assert sum(r["housed"] for r in results) > 0 and sum(r["views"] for r in results) > 0


def _steady_state(rank: int, world: int) -> dict[str, int]:
    import torch

    from rlhf_worker.realloc.execute import reallocate
    from rlhf_worker.realloc.pool import StoragePool

    model = MODELS["gqa"]
    full: dict[str, Any] = reference_weights(model, 5)
    # No rank's quarter lies inside the half it holds (that would be a view, not a copy).
    src, dst = Layout((0, 1, 2, 3), dp=2, tp=2), Layout((1, 3, 0, 2), tp=4)
    plan = plan_reallocation(model, src, dst, 2, bucket_bytes=512)  # packed and sliced buckets
    local = {n: full[n][slices(r)].clone() for n, r in plan.src_shards[rank].items()}
    home = {t.untyped_storage().data_ptr() for t in local.values()}  # shared, never pooled
    pool = StoragePool()
    new_after: list[int] = []
    held: dict[str, Any] | None = None
    for iteration in range(4):
        out = reallocate(plan, local, rank, dtype=torch.float32, alias_local=True, pool=pool)
        assert out is not None
        for n, region in plan.dst_shards[rank].items():
            assert torch.equal(out[n], full[n][slices(region)]), (iteration, n)
        if held is not None:  # kept by the caller: its memory was not lent to this copy
            mine = {t.untyped_storage().data_ptr() for t in out.values()} - home
            assert mine and not mine & {t.untyped_storage().data_ptr() for t in held.values()}
        pool.give_unshared(out, local)
        if iteration == 1:
            held = dict(out)  # the caller keeps this copy (after giving it back)
        new_after.append(pool.new_bytes)
        del out
    for n, region in plan.dst_shards[rank].items():  # later copies did not write into it
        assert held is not None and torch.equal(held[n], full[n][slices(region)])
    # Without a pool, packing buffers still come back from the process-wide buffer pool.
    from rlhf_worker.realloc.execute import MESSAGE_BUFFERS

    reused = MESSAGE_BUFFERS.reused_bytes
    for _ in range(2):
        out = reallocate(plan, local, rank, dtype=torch.float32)
        assert out is not None and all(
            torch.equal(out[n], full[n][slices(r)]) for n, r in plan.dst_shards[rank].items()
        )
    assert MESSAGE_BUFFERS.held_bytes <= MESSAGE_BUFFERS.limit_bytes
    return {
        "new_first": new_after[0],
        "new_second": new_after[1],
        "new_last": new_after[3],
        "buffers_reused": MESSAGE_BUFFERS.reused_bytes - reused,
    }


def test_steady_state_reallocations_reuse_the_pool_and_stay_exact() -> None:
    results = run_distributed(_steady_state, 4)
    for r in results:
        assert r["new_first"] > 0
        assert r["new_second"] == r["new_first"]  # the second copy took only freed memory
        # The third copy could not reuse the one the caller held, so it allocated
        # once more; after that the pool again covers everything.
        assert r["new_last"] > r["new_second"]
    # Every rank sends o_proj/down_proj slices of these row-major clones, which travel
    # column-major: packed, in buffers the next reallocation reuses.
    assert all(r["buffers_reused"] > 0 for r in results)


def _source_shards(plan: Any, rank: int, full: dict[str, Any]) -> dict[str, Any] | None:
    """This rank's source shards in the worker's memory order (None outside the source)."""
    from rlhf_worker.model.storage import in_storage_order

    if rank not in plan.src.ranks:
        return None
    return {
        n: in_storage_order(full[n][slices(r)].clone(), n in plan.column_major)
        for n, r in plan.src_shards[rank].items()
    }


def _zero_copy(rank: int, world: int) -> list[tuple[str, int, int, int]]:
    import torch

    from rlhf_worker.realloc.execute import MemoryStats, reallocate

    model = MODELS["gqa"]
    full: dict[str, Any] = reference_weights(model, 3)
    out = []
    for name, src, dst in [
        ("tp4 -> tp2dp2", Layout((0, 1, 2, 3), tp=4), Layout((0, 1, 2, 3), dp=2, tp=2)),
        ("pp2tp2 -> tp4", Layout((0, 1, 2, 3), pp=2, tp=2), Layout((0, 1, 2, 3), tp=4)),
        ("tp2 -> tp1dp2", Layout((0, 1), tp=2), Layout((2, 3), dp=2)),
    ]:
        # Every piece alone in its message (no packing of small ones).
        plan = plan_reallocation(model, src, dst, 4, solo_bytes=0)
        local = _source_shards(plan, rank, full)
        stats = MemoryStats()
        result = reallocate(plan, local, rank, dtype=torch.float32, stats=stats)
        if result is not None:
            for n, region in plan.dst_shards[rank].items():
                assert torch.equal(result[n], full[n][slices(region)]), (name, n)
                if n in plan.column_major:  # the destination keeps the worker's memory order
                    assert result[n].stride() == (1, result[n].shape[0]), (name, n)
        moved = bytes_received(plan).get(rank, 0) + bytes_sent(plan).get(rank, 0)
        out.append((name, moved, stats.zero_copy_bytes, stats.messages))
    return out


def test_tensor_parallel_slices_of_every_weight_move_without_packing() -> None:
    """With shards in the worker's memory order, a tp change sends and receives every slice
    in place: row-parallel weights are column-major, so their slices are contiguous too."""
    results = run_distributed(_zero_copy, 4)
    for per_rank in results:
        for name, moved, zero_copy, packed in per_rank:
            assert packed == 0 and zero_copy == moved, (name, moved, zero_copy, packed)
    assert all(sum(moved for _, moved, _, _ in r) > 0 for r in results)


def _posters_and_groups(rank: int, world: int) -> dict[str, int]:
    import torch
    import torch.distributed as dist

    from rlhf_worker.realloc import execute

    model = MODELS["gqa"]
    full: dict[str, Any] = reference_weights(model, 7)
    three = dist.new_group([1, 2, 3])  # every rank calls new_group, in the same order
    cases = [
        (None, Layout((0, 1, 2, 3), tp=4), Layout((0, 1, 2, 3), dp=2, tp=2)),
        (three, Layout((1, 2), tp=2), Layout((3,))),
        (three, Layout((3,)), Layout((1, 2, 3), dp=3)),
    ]
    checked = {"gloo_poster": 0, "batched_poster": 0}
    original = execute.poster
    try:
        for name in checked:
            make = getattr(execute, name)
            execute.poster = make  # batched_poster is what NCCL uses: run it here on gloo
            for group, src, dst in cases:
                if group is three and rank == 0:
                    continue
                # Small buckets: some pieces packed, the rest straight through.
                plan = plan_reallocation(model, src, dst, 4, bucket_bytes=2048)
                local = _source_shards(plan, rank, full)
                out = execute.reallocate(plan, local, rank, dtype=torch.float32, group=group)
                if rank not in dst.ranks:
                    assert out is None
                    continue
                assert out is not None
                for n, region in plan.dst_shards[rank].items():
                    assert torch.equal(out[n], full[n][slices(region)]), (name, src, dst, n)
                    checked[name] += 1
    finally:
        execute.poster = original
    return checked


def test_both_posters_on_the_world_and_on_a_subgroup() -> None:
    """The batched posting NCCL needs (run here on gloo) and gloo's own, on the default
    group and on a group of three ranks named by their global ranks: all bit-exact."""
    results = run_distributed(_posters_and_groups, 4)
    assert all(r["gloo_poster"] > 0 and r["gloo_poster"] == r["batched_poster"] for r in results)
