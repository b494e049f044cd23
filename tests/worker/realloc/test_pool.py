"""The storage pool: freed storages are reused, never while in use, within a bound."""

from __future__ import annotations

import pytest
import torch

from rlhf_worker.realloc.pool import StoragePool


def _pointer(tensor: torch.Tensor) -> int:
    return tensor.untyped_storage().data_ptr()


def test_a_storage_given_back_is_lent_again_for_any_shape_of_the_same_bytes() -> None:
    pool = StoragePool(limit_bytes=1 << 20)
    first = pool.empty((8, 16), torch.float32)
    pointer = _pointer(first)
    assert pool.give(first) and pool.holds(first)
    assert pool.held_bytes == 8 * 16 * 4
    del first
    again = pool.empty((32, 4), torch.float32)  # same bytes, another shape
    assert _pointer(again) == pointer
    assert again.shape == (32, 4) and again.is_contiguous()
    assert pool.held_bytes == 0
    assert pool.reused_bytes == 8 * 16 * 4 and pool.new_bytes == 8 * 16 * 4
    half = pool.empty((32, 4), torch.float16)  # nothing free of 256 bytes: a new one
    assert _pointer(half) != pointer
    assert pool.new_bytes == 8 * 16 * 4 + 32 * 4 * 2


@pytest.mark.parametrize("holder", ["tensor", "view", "parameter", "dict"])
def test_a_storage_still_referenced_is_never_lent(holder: str) -> None:
    pool = StoragePool(limit_bytes=1 << 20)
    tensor = pool.empty((64,), torch.float32)
    tensor.fill_(3.0)
    pointer = _pointer(tensor)
    pool.give(tensor)
    kept: object = {
        "tensor": tensor,
        "view": tensor[10:20],
        "parameter": torch.nn.Parameter(tensor),
        "dict": {"w": tensor},
    }[holder]
    del tensor
    other = pool.empty((64,), torch.float32)
    assert _pointer(other) != pointer  # the holder still uses it
    other.fill_(-1.0)
    remaining = kept if isinstance(kept, torch.Tensor) else kept["w"]  # type: ignore[index]
    assert torch.all(remaining == 3.0)
    del kept, remaining
    assert _pointer(pool.empty((64,), torch.float32)) == pointer  # free now


def test_views_and_parts_of_bigger_storages_are_not_kept() -> None:
    pool = StoragePool(limit_bytes=1 << 20)
    base = torch.zeros(10, 10)
    assert not pool.give(base[2:5])  # offset into a bigger storage
    assert not pool.give(base[:5])  # at offset 0 but only half of it
    assert not pool.give(torch.empty(0))
    assert pool.held_bytes == 0 and len(pool) == 0
    assert pool.give(base) and pool.give(base)  # given back twice: kept once
    assert pool.held_bytes == 400 and len(pool) == 1


def test_the_bound_holds_and_the_oldest_storages_go_first() -> None:
    pool = StoragePool(limit_bytes=1000)
    tensors = [torch.empty(100) for _ in range(4)]  # 400 bytes each
    pointers = [_pointer(t) for t in tensors]
    for tensor in tensors:
        assert pool.give(tensor)
        assert pool.held_bytes <= pool.limit_bytes
    assert pool.held_bytes == 800 and len(pool) == 2
    assert not pool.give(torch.empty(300))  # 1200 bytes: over the bound on its own
    del tensors, tensor
    lent = {_pointer(pool.empty((100,), torch.float32)) for _ in range(2)}
    assert lent == set(pointers[2:])  # the two given back last were kept
    pool.give(torch.empty(10))
    pool.clear()
    assert pool.held_bytes == 0 and len(pool) == 0
    with pytest.raises(ValueError, match=">= 0"):
        StoragePool(limit_bytes=-1)


def test_give_unshared_keeps_the_home_copys_memory_out() -> None:
    pool = StoragePool(limit_bytes=1 << 20)
    home = {"a": torch.zeros(4, 4), "b": torch.zeros(8)}
    copy = {"a": home["a"].detach(), "b": torch.zeros(16), "c": torch.nn.Parameter(torch.ones(8))}
    kept = pool.give_unshared(copy, home)
    assert kept == 16 * 4 + 8 * 4
    assert pool.held_bytes == kept
    assert not pool.holds(home["a"]) and pool.holds(copy["b"]) and pool.holds(copy["c"])
