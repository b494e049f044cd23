"""Forward passes under a layout: per-token log-probabilities (actor, ref) and values
(critic, reward).

A batch is a dict of tensors with the batch on dim 0: ``input_ids`` and
``attention_mask`` [B, T] (left or right padding) plus whatever a loss needs.
Every rank of the layout passes its dp replica's batch; every rank gets the
result for that batch (the last stage computes it and broadcasts it over the
pipeline).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Literal

import torch
from torch import Tensor

from rlhf_worker.model.decoder import Decoder, positions_from_mask
from rlhf_worker.parallel.pipeline import broadcast_from_last, pipeline_forward
from rlhf_worker.parallel.tensor import vocab_parallel_logprobs

Batch = Mapping[str, Tensor]
Output = Literal["logprobs", "values"]


def split_batch(batch: Batch, micro_batches: int) -> list[dict[str, Tensor]]:
    """Contiguous micro-batches along dim 0 (fewer if the batch is smaller)."""
    size = batch["input_ids"].shape[0]
    n = max(1, min(micro_batches, size))
    pieces = {key: torch.tensor_split(value, n, dim=0) for key, value in batch.items()}
    return [{key: pieces[key][i] for key in batch} for i in range(n)]


def stage_fn(
    model: Decoder, output: Output, recompute: bool = False
) -> Callable[[Tensor | None, Batch], Tensor]:
    """This rank's computation on one micro-batch: embed (first stage), its layers
    (recomputed in the backward if ``recompute``), and the head (last stage):
    log-probabilities of ``input_ids[:, 1:]`` [B, T-1] or values [B, T]."""

    def run(hidden: Tensor | None, mb: Mapping[str, Tensor]) -> Tensor:
        ids, mask = mb["input_ids"], mb["attention_mask"]
        if hidden is None:
            hidden = model.embed(ids)
        hidden = model.run_layers(hidden, positions_from_mask(mask), mask, recompute=recompute)
        if not model.ctx.is_last:
            return hidden
        if output == "values":
            return model.values(hidden)
        logits = model.lm_logits(hidden[:, :-1])
        return vocab_parallel_logprobs(logits, ids[:, 1:], model.vocab_start, model.ctx.tp_group)

    return run


def hidden_shape(model: Decoder) -> Callable[[Batch], tuple[int, ...]]:
    def shape(mb: Mapping[str, Tensor]) -> tuple[int, ...]:
        b, t = mb["input_ids"].shape
        return (b, t, model.config.shape.hidden_size)

    return shape


def output_shape(batch: Batch, output: Output) -> tuple[int, int]:
    b, t = batch["input_ids"].shape
    return (b, t - 1) if output == "logprobs" else (b, t)


def _forward(model: Decoder, batch: Batch, output: Output, micro_batches: int) -> Tensor:
    ctx = model.ctx
    outs = pipeline_forward(
        ctx,
        split_batch(batch, micro_batches),
        stage_fn(model, output),
        hidden_shape(model),
        model.dtype,
        model.device,
    )
    result = (
        torch.cat([o.float() for o in outs])
        if ctx.is_last
        else torch.empty(output_shape(batch, output), device=model.device)
    )
    return broadcast_from_last(ctx, result)


def forward_logprobs(model: Decoder, batch: Batch, micro_batches: int = 1) -> Tensor:
    """log p(input_ids[:, t+1] | input_ids[:, :t+1]) for every t: float32 [B, T-1]."""
    return _forward(model, batch, "logprobs", micro_batches)


def forward_values(model: Decoder, batch: Batch, micro_batches: int = 1) -> Tensor:
    """The value head's output at every position: float32 [B, T]."""
    return _forward(model, batch, "values", micro_batches)
