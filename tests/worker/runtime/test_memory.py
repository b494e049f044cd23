"""The CPU allocation tracker behind `peak_bytes`: every live tensor storage, once."""

from __future__ import annotations

import pytest
import torch

from rlhf_worker.runtime import memory
from rlhf_worker.runtime.memory import CpuAllocations, measure_peak

MiB = 2**20


def test_the_peak_counts_what_was_live_at_once_and_what_was_already_there() -> None:
    held = torch.zeros(MiB // 4)  # 1 MiB this "rank" holds before the call
    with measure_peak(torch.device("cpu")) as base:
        pass
    with measure_peak(torch.device("cpu")) as peak:
        a = torch.ones(2 * MiB // 4)  # +2 MiB
        view = a[10:]  # a view: no new storage
        a.add_(1)  # in place: none either
        del a, view  # -2 MiB
        b = torch.ones(3 * MiB // 4)  # +3 MiB: the peak is base + 3 MiB, not + 5
        del b
    assert held.numel() and base.peak >= MiB
    assert peak.peak - base.peak == 3 * MiB


def test_autograd_saved_tensors_and_gradients_are_counted() -> None:
    w = torch.randn(256, 256, requires_grad=True)
    x = torch.randn(64, 256)
    with measure_peak(torch.device("cpu")) as base:
        pass
    with measure_peak(torch.device("cpu")) as peak:
        y = (x @ w).relu()  # the product (64 KiB) and the relu's output (64 KiB) live
        y.sum().backward()  # and w.grad (256 KiB) stays
    assert peak.peak - base.peak >= 256 * 256 * 4 + 64 * 256 * 4
    assert w.grad is not None


def test_finalizers_do_not_outlive_the_measurement() -> None:
    tracker = CpuAllocations()
    tracker.close()
    assert not tracker._finalizers


def test_cached_blocks_are_handed_back_on_cuda_only(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    monkeypatch.setattr(memory.torch.cuda, "empty_cache", lambda: calls.append(1))
    memory.hand_back_cached(torch.device("cpu"))
    assert calls == []
    memory.hand_back_cached(torch.device("cuda", 0))
    assert calls == [1]
