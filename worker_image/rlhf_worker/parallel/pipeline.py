"""Pipeline parallelism: activations between stages, and a GPipe schedule.

Stage ``p`` talks to stages ``p - 1`` and ``p + 1`` at the same (dp, tp)
position, through that position's pp group, so traffic of different layouts
and positions never mixes. The schedule is GPipe: every micro-batch forward,
then every micro-batch backward in reverse order. Simple and exact; its bubble
is (pp - 1) / (micro-batches + pp - 1), like 1F1B, at the cost of keeping every
micro-batch's activations until its backward.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TypeVar

import torch
import torch.distributed as dist
from torch import Tensor

from rlhf_worker.parallel.groups import ParallelContext

MB = TypeVar("MB")


def send_to(ctx: ParallelContext, tensor: Tensor, stage: int) -> None:
    dist.send(tensor.contiguous(), dst=ctx.stage_rank(stage), group=ctx.pp_group)


def recv_from(
    ctx: ParallelContext,
    shape: Sequence[int],
    dtype: torch.dtype,
    stage: int,
    device: torch.device | None = None,
) -> Tensor:
    out = torch.empty(tuple(shape), dtype=dtype, device=device)
    dist.recv(out, src=ctx.stage_rank(stage), group=ctx.pp_group)
    return out


def broadcast_from_last(ctx: ParallelContext, tensor: Tensor) -> Tensor:
    """Give every stage the last stage's tensor (others pass a buffer of the same shape)."""
    if ctx.pp_group is None:
        return tensor
    tensor = tensor.contiguous()
    dist.broadcast(tensor, src=ctx.stage_rank(ctx.pp - 1), group=ctx.pp_group)
    return tensor


# A stage's computation on one micro-batch: (hidden from the previous stage, or None on
# the first stage; the micro-batch) -> hidden for the next stage, or the output on the last.
StageFn = Callable[[Tensor | None, MB], Tensor]
ShapeFn = Callable[[MB], tuple[int, ...]]


def pipeline_forward(
    ctx: ParallelContext,
    micro_batches: Sequence[MB],
    stage_fn: StageFn[MB],
    hidden_shape: ShapeFn[MB],
    dtype: torch.dtype,
    device: torch.device | None = None,
) -> list[Tensor]:
    """Forward only, no graph kept; the last stage's outputs per micro-batch (empty elsewhere)."""
    outputs = []
    with torch.no_grad():
        for mb in micro_batches:
            x = (
                None
                if ctx.is_first
                else recv_from(ctx, hidden_shape(mb), dtype, ctx.stage - 1, device)
            )
            y = stage_fn(x, mb)
            if ctx.is_last:
                outputs.append(y)
            else:
                send_to(ctx, y, ctx.stage + 1)
    return outputs


def pipeline_forward_backward(
    ctx: ParallelContext,
    micro_batches: Sequence[MB],
    stage_fn: StageFn[MB],
    loss_fn: Callable[[Tensor, MB], Tensor],
    hidden_shape: ShapeFn[MB],
    dtype: torch.dtype,
    device: torch.device | None = None,
) -> list[Tensor]:
    """GPipe forward and backward; gradients accumulate in the parameters.

    Returns the last stage's per-micro-batch losses (detached; empty elsewhere).
    """
    inputs: list[Tensor | None] = []
    ends: list[Tensor] = []
    for mb in micro_batches:
        x = None
        if not ctx.is_first:
            x = recv_from(ctx, hidden_shape(mb), dtype, ctx.stage - 1, device).requires_grad_()
        y = stage_fn(x, mb)
        if ctx.is_last:
            y = loss_fn(y, mb)
        else:
            send_to(ctx, y.detach(), ctx.stage + 1)
        inputs.append(x)
        ends.append(y)
    for x, y in reversed(list(zip(inputs, ends, strict=True))):
        if ctx.is_last:
            y.backward()
        else:
            y.backward(recv_from(ctx, y.shape, y.dtype, ctx.stage + 1, y.device))
        if x is not None:
            assert x.grad is not None
            send_to(ctx, x.grad, ctx.stage - 1)
    return [y.detach() for y in ends] if ctx.is_last else []
