"""A role's home copy, transient copies made by reallocation, and host offload."""

from __future__ import annotations

import gc
import weakref
from typing import Any

import pytest
import torch

from rlhf_worker.roles import RoleWeights
from rlhf_worker.sharding import Layout, ModelShape, rank_shards
from tests.worker.distributed import run_distributed

MODEL = ModelShape(
    hidden_size=32,
    intermediate_size=48,
    num_layers=3,
    num_heads=8,
    num_kv_heads=4,
    head_dim=4,
    vocab_size=40,
)


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


def test_offload_and_restore_keep_the_same_tensors() -> None:
    home = Layout((0,))
    full = full_weights()
    shards = home_shards(home, 0, full)
    assert shards is not None
    before = {name: t.data_ptr() for name, t in shards.items()}
    role = RoleWeights("ref", MODEL, home, 0, dict(shards), trainable=False)
    role.offload()
    assert role.offloaded
    assert all(t.numel() == 0 for t in shards.values())  # the device memory is released
    with pytest.raises(RuntimeError, match="offloaded"), role.transient(Layout((0, 1), tp=2)):
        pass
    role.restore()
    assert not role.offloaded
    for name, t in shards.items():
        assert role.shards is not None and role.shards[name] is t  # same Parameter objects
        assert torch.equal(t, expected(home, 0, full)[name])
        assert t.data_ptr() != before[name]  # it went through a separate host buffer
    role.restore()  # restoring twice is harmless


def test_trained_roles_are_not_offloaded_and_shards_must_match() -> None:
    home = Layout((0,))
    shards = home_shards(home, 0, full_weights())
    assert shards is not None
    with pytest.raises(ValueError, match="optimizer owns"):
        RoleWeights("actor", MODEL, home, 0, shards, trainable=True).offload()
    with pytest.raises(ValueError, match="do not match"):
        RoleWeights("actor", MODEL, Layout((0, 1), pp=2), 0, shards, trainable=True)
    with pytest.raises(ValueError, match="outside the home"):
        RoleWeights("actor", MODEL, Layout((1,)), 0, shards, trainable=True)
    with pytest.raises(ValueError, match="bfloat16"):
        RoleWeights("actor", MODEL, home, 0, shards, trainable=True, dtype=torch.bfloat16)


def test_the_home_layout_is_its_own_transient_copy() -> None:
    home = Layout((0,))
    shards = home_shards(home, 0, full_weights())
    role = RoleWeights("actor", MODEL, home, 0, shards, trainable=True)
    with role.transient(home) as copy:
        assert copy is shards


def _transient_copies(rank: int, world: int) -> dict[str, int]:
    full = full_weights()
    train = Layout((0, 1, 2, 3), dp=2, tp=2)
    actor = RoleWeights(
        "actor", MODEL, train, rank, home_shards(train, rank, full), trainable=True, rank_node=2
    )
    home_before = {n: t.clone() for n, t in (actor.shards or {}).items()}
    counts = {"aliased": 0, "copied": 0}
    for layout in (
        Layout((0, 1, 2, 3), dp=4),  # generation: tp1 dp4 on the same mesh
        Layout((3, 2, 1, 0), pp=2, tp=2),  # pp and tp on the mesh in another order
        Layout((2, 3), pp=2),  # a subset
    ):
        with actor.transient(layout) as copy:
            if rank not in layout.ranks:
                assert copy is None
                continue
            assert copy is not None
            for name, want in expected(layout, rank, full).items():
                assert torch.equal(copy[name], want)
                assert actor.shards is not None
                if copy[name] is actor.shards.get(name):
                    counts["aliased"] += 1
                else:
                    counts["copied"] += 1
                    copy[name].add_(1.0)  # the call may scribble on a copy: nothing goes back
            probe = next(t for n, t in copy.items() if t is not (actor.shards or {}).get(n))
            gone = weakref.ref(probe)
            held = copy
            del probe
        gc.collect()
        assert not held and gone() is None  # freed on exit, even though the caller kept the dict
    for name, t in (actor.shards or {}).items():
        assert torch.equal(t, home_before[name])
    _frozen_role_moves_between_disjoint_meshes(rank)
    return counts


def _pooled_transient_copies(rank: int, world: int) -> dict[str, int]:
    from rlhf_worker.realloc.pool import StoragePool

    full = full_weights()
    train = Layout((0, 1), tp=2)
    pool = StoragePool()
    actor = RoleWeights(
        "actor", MODEL, train, rank, home_shards(train, rank, full), trainable=True, pool=pool
    )
    home = {t.untyped_storage().data_ptr() for t in (actor.shards or {}).values()}
    gen = Layout((0, 1), dp=2)
    seen: list[set[int]] = []
    for _ in range(3):
        with actor.transient(gen) as copy:
            assert copy is not None
            for name, want in expected(gen, rank, full).items():
                assert torch.equal(copy[name], want)
            seen.append({t.untyped_storage().data_ptr() for t in copy.values()} - home)
            for t in copy.values():
                if t.untyped_storage().data_ptr() not in home:
                    t.fill_(float("nan"))  # a call scribbling on its copy must not matter
            del t  # a tensor still referenced would (rightly) keep its memory from reuse
        # The copied shards went back to the pool, the shared home shards did not.
        assert not any(pool.holds(t) for t in (actor.shards or {}).values())
        assert len(pool) >= len(seen[-1]) > 0
    return {"same_memory": int(seen[1] == seen[2] and bool(seen[1])), "new": pool.new_bytes}


def test_pooled_transient_copies_reuse_memory_and_stay_exact() -> None:
    results = run_distributed(_pooled_transient_copies, 2)
    assert all(r["same_memory"] for r in results)
    with pytest.raises(ValueError, match="pool"):
        from rlhf_worker.realloc.pool import StoragePool

        RoleWeights(
            "actor",
            MODEL,
            Layout((0,)),
            0,
            home_shards(Layout((0,)), 0, full_weights()),
            trainable=True,
            device=torch.device("meta"),
            pool=StoragePool(),
        )


def test_transient_copies_are_exact_and_freed() -> None:
    # One 4-rank world runs both scenarios: spawning processes is the slow part.
    counts = run_distributed(_transient_copies, 4)
    # Replicated norms on ranks that keep them are shared, the rest is copied.
    assert sum(c["aliased"] for c in counts) > 0
    assert sum(c["copied"] for c in counts) > 0


def _frozen_role_moves_between_disjoint_meshes(rank: int) -> None:
    full = full_weights(seed=3)
    home = Layout((0, 1), tp=2)
    ref = RoleWeights(
        "ref", MODEL, home, rank, home_shards(home, rank, full), trainable=False, rank_node=2
    )
    ref.offload()
    ref.restore()
    with ref.transient(Layout((2, 3), dp=2)) as copy:
        if rank in (2, 3):
            assert copy is not None
            assert all(torch.equal(copy[n], w) for n, w in expected(Layout((2,)), 2, full).items())
        else:
            assert copy is None
