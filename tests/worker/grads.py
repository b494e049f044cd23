"""The gradients a trainer's optimizer stepped on, for tests that compare them.

A step frees its gradients (``rlhf_worker.engine.shards``), so tests capture them at
the end of the step: this rank's dp chunk of each shard, flattened.
"""

from __future__ import annotations

import torch
from torch import Tensor

from rlhf_worker.engine import Trainer


def captured_grads(trainer: Trainer) -> dict[str, Tensor]:
    """Filled, at the end of the trainer's next step, with the gradient chunks its
    optimizer stepped on (reduced over dp, tied copies summed, clipped), by name."""
    captured: dict[str, Tensor] = {}
    shards = trainer.shards
    finish = shards.finish_step

    def capture() -> None:
        assert shards._grad_flat is not None
        captured.update({n: g.clone() for n, g in shards._views(shards._grad_flat).items()})
        finish()

    shards.finish_step = capture  # type: ignore[method-assign]
    return captured


def dp_chunk(full: Tensor, dp: int, d: int) -> Tensor:
    """Replica d's chunk of a flattened shard, zero-padded (``engine/shards.py``)."""
    size = -(-full.numel() // dp)
    padded = torch.zeros(dp * size, dtype=full.dtype)
    padded[: full.numel()] = full.flatten()
    return padded[d * size : (d + 1) * size]
