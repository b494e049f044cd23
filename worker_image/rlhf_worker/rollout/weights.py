"""The generation copy's parameters as Hugging Face named tensors, in buckets.

vLLM's ``load_weights`` takes (Hugging Face name, full tensor) pairs. A
generation layout with tp=1 and pp=1 holds every parameter whole, so its
shards are already those tensors: nothing is copied here, the buckets hold
references to the reallocated transient copy. Buckets bound how much one
``collective_rpc`` message carries (it is serialised to the engine's process),
so the extra memory of an update is one bucket, never a second model.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

from torch import Tensor

from rlhf_worker.sharding import Layout

DEFAULT_BUCKET_BYTES = 256 * 1024 * 1024


def check_layout(layout: Layout) -> None:
    """A vLLM engine per dp replica needs whole parameters on each rank (tp=1, pp=1)."""
    if layout.tp != 1 or layout.pp != 1:
        raise ValueError(
            f"rollout.backend vllm: the generation layout must have tp=1 and pp=1 (one engine "
            f"per dp replica), got tp={layout.tp} pp={layout.pp}"
        )


def named_tensors(state: Mapping[str, Tensor]) -> list[tuple[str, Tensor]]:
    """(name, tensor) for every parameter, detached views of the shards (no copies)."""
    return [(name, tensor.detach()) for name, tensor in state.items()]


def buckets(
    named: list[tuple[str, Tensor]], bucket_bytes: int = DEFAULT_BUCKET_BYTES
) -> Iterator[list[tuple[str, Tensor]]]:
    """Consecutive groups of at most `bucket_bytes` (a larger tensor travels alone)."""
    if bucket_bytes <= 0:
        raise ValueError(f"bucket_bytes must be positive, got {bucket_bytes}")
    bucket: list[tuple[str, Tensor]] = []
    size = 0
    for name, tensor in named:
        nbytes = tensor.numel() * tensor.element_size()
        if bucket and size + nbytes > bucket_bytes:
            yield bucket
            bucket, size = [], 0
        bucket.append((name, tensor))
        size += nbytes
    if bucket:
        yield bucket


def total_bytes(named: list[tuple[str, Tensor]]) -> int:
    return sum(t.numel() * t.element_size() for _, t in named)
