"""Pieces of the generation calls that need no engine (run without vLLM)."""

from __future__ import annotations

import torch

from rlhf_worker.runtime.generate import mismatch


def test_mismatch_counts_only_response_tokens() -> None:
    engine = torch.tensor([[-1.0, -2.0, -9.0], [-0.5, -7.0, -7.0]])
    recomputed = torch.tensor([[-1.5, -2.0, 0.0], [-0.25, 0.0, 0.0]])
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    got = mismatch(engine, recomputed, mask)
    assert got["logprob_mismatch_mean"] == (0.5 + 0.0 + 0.25) / 3
    assert got["logprob_mismatch_max"] == 0.5  # the padded positions' gaps are ignored
