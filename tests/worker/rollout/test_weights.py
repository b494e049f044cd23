"""Bucketing of the generation copy's parameters (torch only; runs without vLLM)."""

from __future__ import annotations

import pytest
import torch

from rlhf_worker.rollout.weights import buckets, check_layout, named_tensors, total_bytes
from rlhf_worker.sharding import Layout


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


def test_vllm_needs_whole_parameters_per_rank() -> None:
    check_layout(Layout(ranks=(0, 1), dp=2))
    with pytest.raises(ValueError, match="tp=1 and pp=1"):
        check_layout(Layout(ranks=(0, 1), tp=2))
    with pytest.raises(ValueError, match="tp=2 pp=1"):
        check_layout(Layout(ranks=(0, 1, 2, 3), dp=2, tp=2))
