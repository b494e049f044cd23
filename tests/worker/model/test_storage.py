"""Shard memory order: row-parallel weights column-major, kept so by every path that makes one."""

from __future__ import annotations

from pathlib import Path

import torch

from rlhf_operator.contract.sharding import Layout, ModelShape
from rlhf_worker.model import load_shards
from rlhf_worker.model.storage import empty_shard, in_storage_order, wire_view
from rlhf_worker.model.tiny import tiny_architecture, tiny_hf_config
from rlhf_worker.realloc.copies import offload_tensors, restore_tensors
from rlhf_worker.realloc.pool import StoragePool


def is_column_major(t: torch.Tensor) -> bool:
    return t.dim() == 2 and t.stride() == (1, t.shape[0])


def test_empty_shard_in_either_order_and_from_a_pool() -> None:
    assert empty_shard((3, 5), torch.float32, "cpu", False).stride() == (5, 1)
    assert is_column_major(empty_shard((3, 5), torch.float32, "cpu", True))
    pool = StoragePool()
    given = torch.empty(15)
    pool.give(given)
    pointer = given.data_ptr()
    del given  # the pool lends only memory nothing else holds
    lent = empty_shard((3, 5), torch.float32, "cpu", True, pool.empty)
    assert is_column_major(lent) and lent.untyped_storage().data_ptr() == pointer
    assert pool.give(lent)  # a transposed whole storage goes back whole


def test_in_storage_order_copies_only_when_needed_and_keeps_values() -> None:
    row_major = torch.arange(12.0).view(3, 4)
    column_major = in_storage_order(row_major, True)
    assert is_column_major(column_major) and torch.equal(column_major, row_major)
    assert in_storage_order(column_major, True) is column_major
    back = in_storage_order(column_major, False)
    assert back.is_contiguous() and torch.equal(back, row_major)


def test_a_column_slice_of_a_column_major_shard_is_contiguous_on_the_wire() -> None:
    shard = in_storage_order(torch.arange(24.0).view(4, 6), True)
    part = shard[:, 2:4]
    assert not part.is_contiguous() and wire_view(part, True).is_contiguous()
    assert torch.equal(wire_view(part, True), part.t())
    assert wire_view(part, False) is part


def test_loaded_shards_keep_row_parallel_weights_column_major(tiny_lm_dir: Path) -> None:
    layout = Layout((0, 1), tp=2)
    shape = ModelShape.from_hf_config(tiny_hf_config())
    _, shards = load_shards(tiny_lm_dir, layout, 1, expected=tiny_architecture())
    for param in shape.params():
        tensor = shards[param.name]
        assert is_column_major(tensor) == param.column_major, param.name
        assert param.column_major or tensor.is_contiguous(), param.name
    assert any(p.column_major for p in shape.params())


def test_offloading_keeps_each_tensors_memory_order() -> None:
    tensors = {
        "row": torch.randn(4, 6),
        "column": in_storage_order(torch.randn(4, 6), True),
    }
    before = {n: t.clone() for n, t in tensors.items()}
    host = offload_tensors(tensors)
    assert all(t.numel() == 0 for t in tensors.values())
    restore_tensors(tensors, host, torch.device("cpu"))
    assert is_column_major(tensors["column"]) and tensors["row"].is_contiguous()
    assert all(torch.equal(tensors[n], before[n]) for n in tensors)
