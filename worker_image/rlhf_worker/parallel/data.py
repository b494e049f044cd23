"""Data parallelism and whole-model gradient operations.

Gradients are summed (not averaged) over dp replicas: a loss function returns
each micro-batch's *contribution* to the global loss (e.g. a sum over its
tokens divided by the global token count), so the sum over micro-batches and
replicas is the single-process loss and gradient, however the batch is split.
The sum over replicas itself is a reduce-scatter of the optimizer's shards
(``engine/shards.py``); the operations here act on those shards.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
import torch.distributed as dist
from torch import Tensor

from rlhf_operator.contract.sharding import ModelShape
from rlhf_worker.parallel.groups import ParallelContext


def dp_slice(total: int, dp: int, d: int) -> slice:
    """Replica d's contiguous share of ``total`` items, balanced, earlier replicas taking the rest."""
    base, extra = divmod(total, dp)
    start = d * base + min(d, extra)
    return slice(start, start + base + (1 if d < extra else 0))


def tied_embedding_grads(
    grads: Mapping[str, Tensor], shape: ModelShape, ctx: ParallelContext
) -> None:
    """With tied embeddings over pp > 1 the first and last stage each hold the matrix:
    add their gradients so both copies take the same step."""
    grad = grads.get("model.embed_tokens.weight")
    tied = shape.tie_word_embeddings and shape.head == "lm"
    if not tied or ctx.pp == 1 or ctx.tied_group is None or grad is None:
        return
    if ctx.is_first or ctx.is_last:
        dist.all_reduce(grad, group=ctx.tied_group)


def global_grad_norm(grads: Mapping[str, Tensor], shape: ModelShape, ctx: ParallelContext) -> float:
    """The L2 norm of the whole model's gradient, on every rank, from each rank's dp chunks
    of its shards (``engine/shards.py``: the dp replicas hold disjoint chunks)."""
    device = next(iter(grads.values())).device if grads else None
    total = torch.zeros((), dtype=torch.float64, device=device)
    tp_split = {p.name for p in shape.params() if p.tp_dim is not None}
    for name, grad in grads.items():
        replicated = name not in tp_split
        if replicated and ctx.tp_rank != 0:
            continue
        if name == "model.embed_tokens.weight" and not ctx.is_first:
            continue  # the tied copy on the last stage: counted on the first
        # Each tensor's norm reduced in its own dtype (no copy of the gradient), squared
        # and summed in float64.
        total += torch.linalg.vector_norm(grad).double() ** 2
    if ctx.layout_group is not None:
        dist.all_reduce(total, group=ctx.layout_group)
    return math.sqrt(total.item())


def clip_grads(grads: Mapping[str, Tensor], norm: float, max_norm: float) -> None:
    """Scale gradients so that their global norm is at most ``max_norm`` (as torch does)."""
    coef = min(1.0, max_norm / (norm + 1e-6))
    if coef < 1.0:
        for grad in grads.values():
            grad.mul_(coef)
