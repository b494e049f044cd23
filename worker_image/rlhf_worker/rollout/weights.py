"""The generation copy's parameters as Hugging Face named tensors, in buckets.

vLLM's ``load_weights`` takes (Hugging Face name, full tensor) pairs and cuts
each rank's slice itself. With tp=1 the generation copy holds every parameter
whole, so its shards are already those tensors: nothing is copied, the buckets
hold references to the reallocated transient copy. With tp>1 each bucket's
shards are all-gathered over the tensor-parallel group into full tensors just
before they are loaded. Either way buckets bound the extra memory of an update
to one bucket, never a second model.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

import torch
import torch.distributed as dist
from torch import Tensor

from rlhf_operator.contract.sharding import Layout, ModelShape, vllm_layout_problem
from rlhf_worker.parallel import ParallelContext

DEFAULT_BUCKET_BYTES = 256 * 1024 * 1024


def check_layout(layout: Layout, world_size: int) -> None:
    """Refuse a layout vLLM cannot generate under (the planner refuses it too)."""
    problem = vllm_layout_problem(layout, world_size)
    if problem is not None:
        raise ValueError(f"rollout.backend vllm: {problem}")


def named_tensors(state: Mapping[str, Tensor]) -> list[tuple[str, Tensor]]:
    """(name, tensor) for every parameter, detached views of the shards (no copies)."""
    return [(name, tensor.detach()) for name, tensor in state.items()]


def buckets(
    named: list[tuple[str, Tensor]],
    bucket_bytes: int = DEFAULT_BUCKET_BYTES,
    scale: Mapping[str, int] | None = None,
) -> Iterator[list[tuple[str, Tensor]]]:
    """Consecutive groups of at most `bucket_bytes` (a larger tensor travels alone).

    ``scale`` counts a tensor as that many times its size (a tp shard that will be
    gathered into the full tensor before it is sent).
    """
    if bucket_bytes <= 0:
        raise ValueError(f"bucket_bytes must be positive, got {bucket_bytes}")
    bucket: list[tuple[str, Tensor]] = []
    size = 0
    for name, tensor in named:
        nbytes = tensor.numel() * tensor.element_size() * (scale or {}).get(name, 1)
        if bucket and size + nbytes > bucket_bytes:
            yield bucket
            bucket, size = [], 0
        bucket.append((name, tensor))
        size += nbytes
    if bucket:
        yield bucket


def total_bytes(named: list[tuple[str, Tensor]]) -> int:
    return sum(t.numel() * t.element_size() for _, t in named)


def gathered_buckets(
    state: Mapping[str, Tensor],
    shape: ModelShape,
    ctx: ParallelContext,
    bucket_bytes: int = DEFAULT_BUCKET_BYTES,
) -> Iterator[list[tuple[str, Tensor]]]:
    """Buckets of full tensors, from this rank's tensor-parallel shards (collective over tp).

    Every rank of the tp group walks the same parameters in the same order, so their
    all-gathers pair up; bucket sizes count the full tensors, what the bucket holds.
    """
    split_dims = {param.name: param.tp_dim for param in shape.params()}
    # Bucket by full sizes (a split tensor is tp times its shard), then gather each
    # bucket only when it is wanted: one bucket of full tensors exists at a time.
    full = {name: ctx.tp for name, dim in split_dims.items() if dim is not None}
    for bucket in buckets(named_tensors(state), bucket_bytes, full if ctx.tp > 1 else None):
        if ctx.tp == 1:
            yield bucket
        else:
            yield [(name, _gather(shard, split_dims.get(name), ctx)) for name, shard in bucket]


def _gather(shard: Tensor, dim: int | None, ctx: ParallelContext) -> Tensor:
    if dim is None:  # replicated over tp (norms): every rank already holds it whole
        return shard
    parts = [torch.empty_like(shard) for _ in range(ctx.tp)]
    dist.all_gather(parts, shard.contiguous(), group=ctx.tp_group)
    return torch.cat(parts, dim=dim)
