"""Tensor-parallel building blocks (Megatron style) over an explicit group.

Column-parallel linears take their input through ``copy_to_tp`` (identity
forward, all-reduce of the gradient backward); row-parallel linears give their
output through ``reduce_from_tp`` (all-reduce forward, identity backward).
The vocabulary is split like a column-parallel linear: the embedding looks up
the rows it holds and all-reduces, and log-probabilities of given tokens are
computed from each rank's slice of the logits with three small all-reduces,
never gathering the full-vocabulary logits.

Everything computed after a ``reduce_from_tp`` is identical on every rank of
the group, which is what makes the identity backward correct.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from rlhf_worker.parallel.groups import Group


class _CopyToTP(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: Tensor, group: Group) -> Tensor:
        ctx.group = group
        return x

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        grad = grad.contiguous()
        dist.all_reduce(grad, group=ctx.group)
        return grad, None


class _ReduceFromTP(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: Tensor, group: Group) -> Tensor:
        x = x.contiguous().clone()
        dist.all_reduce(x, group=group)
        return x

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        return grad, None


def copy_to_tp(x: Tensor, group: Group) -> Tensor:
    """Enter a column-parallel region: identity forward, gradient summed over the group."""
    return x if group is None else _CopyToTP.apply(x, group)


def reduce_from_tp(x: Tensor, group: Group) -> Tensor:
    """Leave a row-parallel region: partial results summed over the group."""
    return x if group is None else _ReduceFromTP.apply(x, group)


def all_gather_last_dim(x: Tensor, group: Group, ranks: Sequence[int]) -> Tensor:
    """Concatenate each rank's slice along the last dimension, in the order of ``ranks``
    (the layout's tp order; no gradient; for sampling).

    ``new_group`` numbers a group's members by ascending global rank, which is not the
    layout's tp order when a mesh lists its ranks in another order.
    """
    if group is None:
        return x
    parts = [torch.empty_like(x) for _ in ranks]
    dist.all_gather(parts, x.contiguous(), group=group)
    by_global = dict(zip(sorted(ranks), parts, strict=True))
    return torch.cat([by_global[r] for r in ranks], dim=-1)


def vocab_parallel_embedding(
    tokens: Tensor, weight: Tensor, vocab_start: int, group: Group
) -> Tensor:
    """Embedding rows [vocab_start, vocab_start + rows) live here; other tokens give zeros."""
    if group is None:
        return torch.nn.functional.embedding(tokens, weight)
    local = tokens - vocab_start
    outside = (local < 0) | (local >= weight.shape[0])
    out = torch.nn.functional.embedding(local.masked_fill(outside, 0), weight)
    out = out.masked_fill(outside.unsqueeze(-1), 0.0)
    return reduce_from_tp(out, group)


def vocab_parallel_logprobs(
    logits: Tensor, targets: Tensor, vocab_start: int, group: Group
) -> Tensor:
    """log softmax(logits)[target] over the full vocabulary, from this rank's vocabulary slice.

    ``logits``: [..., local_vocab] (float32 recommended); ``targets``: [...] full-vocab ids.
    """
    logits = logits.float()
    local_max = logits.detach().max(dim=-1).values
    if group is not None:
        dist.all_reduce(local_max, op=dist.ReduceOp.MAX, group=group)
    shifted = logits - local_max.unsqueeze(-1)
    sum_exp = reduce_from_tp(shifted.exp().sum(dim=-1), group)
    local = targets - vocab_start
    outside = (local < 0) | (local >= logits.shape[-1])
    picked = shifted.gather(-1, local.masked_fill(outside, 0).unsqueeze(-1)).squeeze(-1)
    picked = reduce_from_tp(picked.masked_fill(outside, 0.0), group)
    return picked - sum_exp.log()
