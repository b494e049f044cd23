"""Bucketing of the generation copy's parameters (torch only; runs without vLLM)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from rlhf_operator.contract.sharding import Layout
from rlhf_worker.model import load_decoder
from rlhf_worker.model.tiny import build_tiny_model, tiny_hf_config
from rlhf_worker.rollout.weights import (
    buckets,
    check_layout,
    gathered_buckets,
    named_tensors,
    total_bytes,
)
from tests.worker.distributed import run_distributed


def test_buckets_keep_order_bound_size_and_share_storage() -> None:
    state = {f"w{i}": torch.randn(16, 16) for i in range(5)}  # 1 KiB each
    named = named_tensors(state)
    groups = list(buckets(named, bucket_bytes=2048))
    assert [len(g) for g in groups] == [2, 2, 1]
    flat = [pair for g in groups for pair in g]
    assert [n for n, _ in flat] == list(state)
    # No copies: each bucket entry is the parameter's own storage.
    assert all(t.data_ptr() == state[n].data_ptr() for n, t in flat)
    assert total_bytes(named) == 5 * 1024


def test_a_tensor_larger_than_a_bucket_travels_alone() -> None:
    named = [("small", torch.zeros(4)), ("big", torch.zeros(1000)), ("tail", torch.zeros(4))]
    assert [[n for n, _ in g] for g in buckets(named, bucket_bytes=64)] == [
        ["small"],
        ["big"],
        ["tail"],
    ]
    with pytest.raises(ValueError, match="positive"):
        list(buckets(named, bucket_bytes=0))


def test_vllm_layouts_one_engine_per_replica_tp_over_the_whole_world() -> None:
    check_layout(Layout(ranks=(0, 1), dp=2), world_size=4)
    check_layout(Layout(ranks=(2,)), world_size=4)  # tp=1: any ranks
    check_layout(Layout(ranks=(0, 1), tp=2), world_size=2)
    check_layout(Layout(ranks=(0, 1, 2, 3), dp=2, tp=2), world_size=4)
    with pytest.raises(ValueError, match="pp=1"):
        check_layout(Layout(ranks=(0, 1), pp=2), world_size=2)
    # vLLM's tp groups are consecutive ranks of the whole world.
    with pytest.raises(ValueError, match="span all 4 workers"):
        check_layout(Layout(ranks=(0, 1), tp=2), world_size=4)
    with pytest.raises(ValueError, match=r"rank order .* got ranks \[1, 0\]"):
        check_layout(Layout(ranks=(1, 0), tp=2), world_size=2)


def _gather_tp2(rank: int, world_size: int, model_dir: str) -> list[list[tuple[str, torch.Tensor]]]:
    model = load_decoder(model_dir, Layout(ranks=(0, 1), tp=2), rank)
    return list(gathered_buckets(model.local_state(), model.config.shape, model.ctx, 256 * 1024))


def test_gathered_buckets_rebuild_the_full_tensors_from_tp_shards(tmp_path: Path) -> None:
    build_tiny_model(tmp_path, tiny_hf_config(), seed=3)
    full = load_file(str(tmp_path / "model.safetensors"))
    per_rank = run_distributed(_gather_tp2, 2, str(tmp_path), timeout=120)
    assert len(per_rank[0]) > 1  # several buckets
    for groups in per_rank:
        flat = [pair for group in groups for pair in group]
        assert sorted(name for name, _ in flat) == sorted(full)  # each parameter once
        for name, tensor in flat:
            assert torch.equal(tensor, full[name]), name
        # A bucket holds at most its budget of full tensors, unless one tensor is larger.
        for group in groups:
            assert len(group) == 1 or total_bytes(group) <= 256 * 1024
