"""Pipeline parallelism: activations between stages, and the 1F1B schedule.

Stage ``p`` talks to stages ``p - 1`` and ``p + 1`` at the same (dp, tp)
position, through that position's pp group, so traffic of different layouts
and positions never mixes. Training runs the 1F1B schedule (each stage holds
at most pp micro-batches' activations, so micro-batching bounds activation
memory); forward-only passes keep no graph and simply run every micro-batch
through (GPipe order). Both have the bubble (pp - 1) / (micro-batches + pp - 1).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeVar

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
    """1F1B forward and backward; gradients accumulate through the parameters' hooks.

    Stage ``s`` first runs ``pp - s - 1`` forwards (the warm-up), then alternates one
    forward and one backward, then drains the remaining backwards: at most ``pp - s``
    micro-batches' activations are alive at once (the first stage: ``pp``; one at
    pp = 1), whatever the number of micro-batches. Sends are asynchronous, receives
    block: a stage sending its next forward while its neighbour sends it a gradient
    would otherwise wait on each other. Returns the last stage's per-micro-batch losses
    (detached, in order; empty elsewhere).
    """
    n = len(micro_batches)
    warmup = min(ctx.pp - ctx.stage - 1, n)
    inputs: dict[int, Tensor | None] = {}
    ends: dict[int, Tensor] = {}
    losses: list[Tensor] = []
    sending: list[tuple[Any, Tensor]] = []  # (work, buffer): alive until the send completes

    def isend(tensor: Tensor, stage: int) -> None:
        buffer = tensor.contiguous()
        sending.append((dist.isend(buffer, dst=ctx.stage_rank(stage), group=ctx.pp_group), buffer))

    def forward(i: int) -> None:
        mb = micro_batches[i]
        x = None
        if not ctx.is_first:
            x = recv_from(ctx, hidden_shape(mb), dtype, ctx.stage - 1, device).requires_grad_()
        y = stage_fn(x, mb)
        if ctx.is_last:
            y = loss_fn(y, mb)
            losses.append(y.detach())
        else:
            isend(y.detach(), ctx.stage + 1)
        inputs[i], ends[i] = x, y

    def backward(i: int) -> None:
        x, y = inputs.pop(i), ends.pop(i)
        if ctx.is_last:
            y.backward()
        else:
            y.backward(recv_from(ctx, y.shape, y.dtype, ctx.stage + 1, y.device))
        if x is not None:
            assert x.grad is not None
            isend(x.grad, ctx.stage - 1)

    for i in range(warmup):
        forward(i)
    for i in range(n - warmup):
        forward(warmup + i)
        backward(i)
    for i in range(n - warmup, n):
        backward(i)
    for work, _ in sending:
        work.wait()
    return losses
