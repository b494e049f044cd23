"""A role's transient copies made by reallocation, their release, and host offload: the
functions the worker runtime calls (``runtime/models.py``, ``runtime/offload.py``)."""

from __future__ import annotations

import gc
import weakref
from typing import Any

import pytest
import torch

from rlhf_operator.contract.sharding import Layout, rank_shards
from rlhf_worker.realloc.copies import (
    offload_tensors,
    release_copy,
    restore_tensors,
    transient_copy,
)
from rlhf_worker.realloc.plan import plan_reallocation
from rlhf_worker.realloc.pool import StoragePool
from tests.worker.distributed import run_distributed
from tests.worker.realloc.cases import GQA

MODEL = GQA


def full_weights(seed: int = 7) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {p.name: torch.randn(p.shape, generator=gen) for p in MODEL.params()}


def home_shards(layout: Layout, rank: int, full: dict[str, torch.Tensor]) -> dict[str, Any] | None:
    if rank not in layout.ranks:
        return None
    return {
        name: torch.nn.Parameter(full[name][tuple(slice(a, b) for a, b in region)].clone())
        for name, region in rank_shards(MODEL, layout, rank).items()
    }


def expected(layout: Layout, rank: int, full: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {
        name: full[name][tuple(slice(a, b) for a, b in region)]
        for name, region in rank_shards(MODEL, layout, rank).items()
    }


def shares_memory(a: torch.Tensor, b: torch.Tensor | None) -> bool:
    # A shared shard is the home tensor detached: another object, the same memory.
    return b is not None and a.untyped_storage().data_ptr() == b.untyped_storage().data_ptr()


def copy_of(
    home: Layout, layout: Layout, rank: int, shards: dict[str, Any] | None, **kw: Any
) -> dict[str, torch.Tensor] | None:
    plan = plan_reallocation(MODEL, home, layout, 2)
    return transient_copy(plan, shards, rank, dtype=torch.float32, device=torch.device("cpu"), **kw)


def test_offload_and_restore_keep_the_same_tensors() -> None:
    home = Layout((0,))
    full = full_weights()
    shards = home_shards(home, 0, full)
    assert shards is not None
    before = {name: t.data_ptr() for name, t in shards.items()}
    host = offload_tensors(shards)
    assert all(t.numel() == 0 for t in shards.values())  # the device memory is released
    assert all(torch.equal(host[n], w) for n, w in expected(home, 0, full).items())
    objects = dict(shards)
    restore_tensors(shards, host, torch.device("cpu"))
    for name, t in shards.items():
        assert objects[name] is t  # the same Parameter objects: modules built on them stay valid
        assert torch.equal(t, expected(home, 0, full)[name])
        assert t.data_ptr() != before[name]  # it went through a separate host buffer


def test_a_pool_is_for_cpu_tensors() -> None:
    plan = plan_reallocation(MODEL, Layout((0,)), Layout((0, 1), dp=2), 1)
    with pytest.raises(ValueError, match="pool is for CPU"):
        transient_copy(
            plan, None, 1, dtype=torch.float32, device=torch.device("meta"), pool=StoragePool()
        )


def _transient_copies(rank: int, world: int) -> dict[str, int]:
    full = full_weights()
    train = Layout((0, 1, 2, 3), dp=2, tp=2)
    home = home_shards(train, rank, full)
    home_before = {n: t.clone() for n, t in (home or {}).items()}
    counts = {"aliased": 0, "copied": 0}
    for layout in (
        Layout((0, 1, 2, 3), dp=4),  # generation: tp1 dp4 on the same mesh
        Layout((3, 2, 1, 0), pp=2, tp=2),  # pp and tp on the mesh in another order
        Layout((2, 3), pp=2),  # a subset
    ):
        copy = copy_of(train, layout, rank, home)
        if rank not in layout.ranks:
            assert copy is None
            continue
        assert copy is not None and home is not None
        for name, want in expected(layout, rank, full).items():
            assert torch.equal(copy[name], want)
            if shares_memory(copy[name], home.get(name)):
                counts["aliased"] += 1
            else:
                counts["copied"] += 1
                copy[name].add_(1.0)  # the call may scribble on a copy: nothing goes back
        probe = next(t for n, t in copy.items() if not shares_memory(t, home.get(n)))
        gone = weakref.ref(probe)
        del probe
        release_copy(copy, home, None)
        gc.collect()
        assert not copy and gone() is None  # freed, even though the caller kept the dict
    for name, t in (home or {}).items():
        assert torch.equal(t, home_before[name])
    _frozen_role_moves_between_disjoint_meshes(rank)
    return counts


def _pooled_transient_copies(rank: int, world: int) -> dict[str, int]:
    full = full_weights()
    train = Layout((0, 1), tp=2)
    pool = StoragePool()
    home = home_shards(train, rank, full)
    assert home is not None
    home_memory = {t.untyped_storage().data_ptr() for t in home.values()}
    gen = Layout((0, 1), dp=2)
    seen: list[set[int]] = []
    for _ in range(3):
        copy = copy_of(train, gen, rank, home, pool=pool)
        assert copy is not None
        for name, want in expected(gen, rank, full).items():
            assert torch.equal(copy[name], want)
        seen.append({t.untyped_storage().data_ptr() for t in copy.values()} - home_memory)
        for t in copy.values():
            if t.untyped_storage().data_ptr() not in home_memory:
                t.fill_(float("nan"))  # a call scribbling on its copy must not matter
        del t  # a tensor still referenced would (rightly) keep its memory from reuse
        release_copy(copy, home, pool)
        # The copied shards went back to the pool, the shared home shards did not.
        assert not any(pool.holds(t) for t in home.values())
        assert len(pool) >= len(seen[-1]) > 0
    return {"same_memory": int(seen[1] == seen[2] and bool(seen[1])), "new": pool.new_bytes}


def test_pooled_transient_copies_reuse_memory_and_stay_exact() -> None:
    results = run_distributed(_pooled_transient_copies, 2)
    assert all(r["same_memory"] for r in results)


def test_transient_copies_are_exact_and_freed() -> None:
    # One 4-rank world runs both scenarios: spawning processes is the slow part.
    counts = run_distributed(_transient_copies, 4)
    # Replicated norms on ranks that keep them are shared, the rest is copied.
    assert sum(c["aliased"] for c in counts) > 0
    assert sum(c["copied"] for c in counts) > 0


def _frozen_role_moves_between_disjoint_meshes(rank: int) -> None:
    full = full_weights(seed=3)
    home = Layout((0, 1), tp=2)
    shards = home_shards(home, rank, full)
    if shards is not None:
        restore_tensors(shards, offload_tensors(shards), torch.device("cpu"))
    copy = copy_of(home, Layout((2, 3), dp=2), rank, shards)
    if rank in (2, 3):
        assert copy is not None
        assert all(torch.equal(copy[n], w) for n, w in expected(Layout((2,)), 2, full).items())
    else:
        assert copy is None
