"""Executing a reallocation plan: moving the bytes with torch.distributed point-to-point.

The same code runs on gloo (CPU tensors) and NCCL (device tensors). Each rank
posts its messages in an order both ends of every message agree on (``_steps``):

* first, all together, every bucket that goes straight from one tensor into
  another: a single piece that is one block of memory at both ends (a
  tensor-parallel slice of any weight, since row-parallel weights are stored
  column-major and travel transposed: see ``model/storage.py``). The message is a
  slice of the tensor's flat view at the span the plan worked out
  (``Transfer.span``): no packing copy, no memory beyond the tensors, and almost
  no work per message;
* then the packed buckets (pieces under the plan's ``solo_bytes``, packed into
  one flat buffer, one copy per piece, so many small tensors do not mean many
  messages), step by step, many steps in flight so independent transfers
  overlap while the packing buffers in flight stay under a bound (two buckets
  by default). Peak extra memory is the destination shards plus about two
  buckets.

Messages are posted with ``batch_isend_irecv`` on NCCL; on gloo with the process
group's own send/recv (see ``poster``). Packing buffers are reused from step to
step, and with a ``StoragePool`` (CPU) destination shards and buffers reuse the
memory of earlier reallocations, so steady-state iterations do not fault fresh
pages in.

Where the time goes on CPU (``benchmarks/realloc.py``): the transfer itself is
CPU work (loopback TCP copies in gloo's threads), so everything else a rank does
competes with it for the cores. Beyond a raw transfer of the same bytes, a
reallocation does the plan's local copies (what a rank keeps, e.g. half of every
weight for tp2 -> tp1: as many bytes as it receives; none where the destination
is a view of the source, or the source was kept inside it, ``copies.house``), sends one message per
weight slice instead of one per pair of ranks (gloo's TCP transport exchanges
ready notifications for each message before its data), and runs this module's
bookkeeping: about a millisecond of Python per rank (1.2 ms for a rank of
tp4 -> tp2dp2 with 232 messages, measured quiet with the sends and receives
made no-ops), which on a CPU-bound machine comes out of the transfer, the more
so before the first message is posted. The benchmark splits the gap into these
three parts (its floor and prebuilt columns).

Why point-to-point rather than ReaL's broadcasts in groups: on gloo, measured by
``benchmarks/realloc.py`` in the same run, broadcasts in 2-rank groups and
batched isend/irecv move the same bytes at the same speed within noise, and
point-to-point needs no new process group (``new_group`` must be called by all
ranks, in the same order, for every sender/receivers set). So nothing here
has to be called collectively: a rank outside both layouts simply returns. With NCCL, make sure
the communicator exists before the first reallocation (e.g. pass ``device_id``
to ``init_process_group`` or run a barrier), as ``batch_isend_irecv`` requires
when it is the first operation on a group.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field

import torch
import torch.distributed as dist

from rlhf_worker.model.storage import empty_shard, flat_view, wire_view
from rlhf_worker.realloc.plan import (
    DEFAULT_BUCKET_BYTES,
    RankProgram,
    ReallocPlan,
    Transfer,
    region_shape,
)
from rlhf_worker.realloc.pool import StoragePool

# Packing buffers of reallocations on CPU that are given no pool, kept for the next
# steps and the next reallocations: at most four default buckets stay held idle.
MESSAGE_BUFFERS = StoragePool(limit_bytes=4 * DEFAULT_BUCKET_BYTES)


@dataclass
class MemoryStats:
    """Bytes this rank allocated during a reallocation (destination tensors and messages).

    Exact accounting of what the executor allocates, not the process's RSS.
    """

    current: int = 0
    peak: int = 0
    destination: int = 0  # bytes of destination tensors allocated (not aliased)
    messages: int = 0  # bytes of packing buffers allocated in total
    zero_copy_bytes: int = 0  # bytes sent or received without a packing copy
    local_copy_bytes: int = 0  # bytes copied from this rank's own source shards

    def alloc(self, nbytes: int) -> None:
        self.current += nbytes
        self.peak = max(self.peak, self.current)

    def free(self, nbytes: int) -> None:
        self.current -= nbytes


@dataclass
class _InFlight:
    works: list[dist.Work]
    unpack: list[tuple[torch.Tensor, Transfer]] = field(default_factory=list)
    buffer_bytes: int = 0
    # Packing buffers, held until the step is done, then given back to the pool.
    packed: list[torch.Tensor] = field(default_factory=list)


def reallocate(
    plan: ReallocPlan,
    local_src: Mapping[str, torch.Tensor] | None,
    rank: int,
    *,
    dtype: torch.dtype,
    device: torch.device | str = "cpu",
    group: dist.ProcessGroup | None = None,
    max_inflight_steps: int = 32,
    max_buffer_bytes: int | None = None,
    alias_local: bool = False,
    into: Mapping[str, torch.Tensor] | None = None,
    stats: MemoryStats | None = None,
    pool: StoragePool | None = None,
) -> dict[str, torch.Tensor] | None:
    """Run this rank's part of a plan; return its destination shards (None if it holds none).

    ``local_src`` is this rank's shards in the source layout (None if it is not in
    it); ``rank`` is its global rank, as the layouts name ranks. With
    ``alias_local`` a destination shard that is a source shard, or a block of a
    source shard's memory (a tensor-parallel slice of it), is returned as a view
    of it instead of a copy (right for a transient copy that is only read; never
    for one that will be trained independently). Up to
    ``max_inflight_steps`` steps are in flight (the messages sent straight from
    and into the tensors count as one) while their packing buffers stay under
    ``max_buffer_bytes`` (default two buckets). With ``into``
    the destination shards it names are written into these existing tensors (e.g.
    the weights of a rollout engine that keeps its own buffers, or the buffers a
    source shard is kept inside, ``copies.house``) instead of new ones. A local
    copy whose destination is the very memory of its source is skipped.
    With ``pool`` (CPU only, see ``pool.py``) new destination shards and packing
    buffers come from storages freed by earlier reallocations, and the packing
    buffers go back to it as their steps complete; without one, packing buffers
    on CPU still come from and go back to ``MESSAGE_BUFFERS``.
    """
    in_src = rank in plan.src_shards
    dst_regions = plan.dst_shards.get(rank)
    if not in_src and dst_regions is None:
        return None
    if in_src and local_src is None:
        raise ValueError(f"rank {rank} is in the source layout but was given no source shards")
    stats = stats if stats is not None else MemoryStats()
    element_bytes = dtype.itemsize
    if element_bytes != plan.element_bytes:
        raise ValueError(f"plan counts {plan.element_bytes}-byte elements, tensors are {dtype}")

    program = plan.program(rank)
    out: dict[str, torch.Tensor] | None = None
    if dst_regions is not None:
        out = {}
        views = dict(program.views) if alias_local and local_src is not None else {}
        for name, region in dst_regions.items():
            if into is not None and name in into:
                if tuple(into[name].shape) != region_shape(region) or not _dense(into[name]):
                    raise ValueError(f"{name}: cannot receive {region_shape(region)} into it")
                out[name] = into[name]
                continue
            if name in views:
                assert local_src is not None
                out[name] = local_src[name][views[name]]
                continue
            alloc = pool.empty if pool is not None else None
            column_major = name in plan.column_major
            out[name] = empty_shard(region_shape(region), dtype, device, column_major, alloc)
            stats.destination += out[name].numel() * element_bytes
            stats.alloc(out[name].numel() * element_bytes)

    post = poster(group)
    buffer_limit = 2 * plan.bucket_bytes if max_buffer_bytes is None else max_buffer_bytes
    # Packing buffers of the same size recur (one per layer for each sliced
    # parameter, and in every reallocation of the same plan): reuse freed ones
    # rather than fault fresh pages in (on CPU fresh pages cost as much as the
    # transfer). On CUDA torch's caching allocator does this; a pool per call
    # still saves its bookkeeping.
    if pool is not None:
        buffers = pool
    elif torch.device(device).type == "cpu":
        buffers = MESSAGE_BUFFERS
    else:
        buffers = StoragePool(limit_bytes=buffer_limit)
    with torch.no_grad():
        inflight: deque[_InFlight] = deque()  # prepared steps, posted or not, oldest first
        # Prepared steps not posted yet. Steps are posted in a burst just before the
        # executor has to wait (or at the end) rather than each as soon as it is
        # prepared: measured on gloo (benchmarks/realloc.py), interleaving the
        # preparation's Python with the first transfers slows them more than
        # starting them a few milliseconds later, all at once.
        unposted: list[tuple[_InFlight, list[Message]]] = []
        inflight_buffer_bytes = 0
        local_done = False
        flats = (_FlatViews(out, plan.column_major), _FlatViews(local_src, plan.column_major))
        for flight, ops in _steps(program, flats, dtype, stats, buffers):
            while inflight and (
                len(inflight) >= max_inflight_steps
                or flight.buffer_bytes + inflight_buffer_bytes > buffer_limit
            ):
                _post_all(unposted, post)
                if not local_done:
                    # The local copies overlap with the first steps in flight.
                    _copy_local(program, local_src, out, stats)
                    local_done = True
                done = inflight.popleft()
                _finish(done, out, stats, buffers)
                inflight_buffer_bytes -= done.buffer_bytes
                del done  # its buffers must be unreferenced before the pool lends them again
            inflight.append(flight)
            unposted.append((flight, ops))
            inflight_buffer_bytes += flight.buffer_bytes
            del flight, ops
        _post_all(unposted, post)
        if not local_done:
            _copy_local(program, local_src, out, stats)
        while inflight:
            _finish(inflight.popleft(), out, stats, buffers)
    return out


def local_copies(
    plan: ReallocPlan,
    rank: int,
    local_src: Mapping[str, torch.Tensor] | None,
    out: Mapping[str, torch.Tensor] | None,
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """This rank's local copies as (destination view, source view) pairs: the parts of its
    destination shards it already holds in the source layout, but elsewhere in memory
    (a destination that is its source's memory, shared or kept in place, needs none)."""
    return _local_views(plan.program(rank), local_src, out)


def prepared_messages(
    plan: ReallocPlan,
    rank: int,
    local_src: Mapping[str, torch.Tensor] | None,
    out: Mapping[str, torch.Tensor] | None,
    *,
    dtype: torch.dtype,
) -> tuple[list[Message], list[tuple[torch.Tensor, Transfer]]]:
    """This rank's messages for the whole plan, built as ``reallocate`` builds them (the same
    slices of the same tensors; packed buffers, sends packed now), and the received packed
    messages with the transfer each fills (``unpack`` after they arrive). For measuring the
    executor against its own messages (``benchmarks/realloc.py``); the buffers stay the
    caller's."""
    flats = (_FlatViews(out, plan.column_major), _FlatViews(local_src, plan.column_major))
    buffers = StoragePool(limit_bytes=0)  # keeps nothing: every buffer is new
    prepared = list(_steps(plan.program(rank), flats, dtype, MemoryStats(), buffers))
    messages = [op for _, ops in prepared for op in ops]
    return messages, [pair for flight, _ in prepared for pair in flight.unpack]


def unpack(message: torch.Tensor, transfer: Transfer, out: Mapping[str, torch.Tensor]) -> None:
    """Copy a received packed message into the destination shards it holds pieces of."""
    _scatter(message, _wire_views(out, transfer), into_message=False)


def _local_views(
    program: RankProgram,
    local_src: Mapping[str, torch.Tensor] | None,
    out: Mapping[str, torch.Tensor] | None,
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    if out is None or local_src is None:
        return []
    pairs = [
        (out[name][dst_index], local_src[name][src_index])
        for name, dst_index, src_index in program.copies
    ]
    return [(target, source) for target, source in pairs if not _same_memory(target, source)]


def _same_memory(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Whether two views are the same elements of the same memory (copying one into the
    other would change nothing)."""
    return (
        a.device == b.device
        and a.data_ptr() == b.data_ptr()
        and a.shape == b.shape
        and a.stride() == b.stride()
    )


def _copy_local(
    program: RankProgram,
    local_src: Mapping[str, torch.Tensor] | None,
    out: Mapping[str, torch.Tensor] | None,
    stats: MemoryStats,
) -> None:
    for target, source in _local_views(program, local_src, out):
        target.copy_(source)
        stats.local_copy_bytes += target.numel() * target.element_size()


# One message as a rank posts it: (is a send, tensor, peer as a global rank, tag).
Message = tuple[bool, torch.Tensor, int, int]


def _post_all(
    unposted: list[tuple[_InFlight, list[Message]]],
    post: Callable[[list[Message]], list[dist.Work]],
) -> None:
    for flight, ops in unposted:
        flight.works = post(ops)
    unposted.clear()


def poster(group: dist.ProcessGroup | None) -> Callable[[list[Message]], list[dist.Work]]:
    """How this rank posts one step's messages on ``group``: ``gloo_poster`` on gloo,
    ``batched_poster`` on any other backend (NCCL)."""
    return gloo_poster(group) if dist.get_backend(group) == "gloo" else batched_poster(group)


def batched_poster(group: dist.ProcessGroup | None) -> Callable[[list[Message]], list[dist.Work]]:
    """Post a step's messages as one ``batch_isend_irecv``: NCCL needs it, since a step's
    sends and receives between the same ranks must be grouped or they can deadlock.
    (It works on gloo too, which is how the tests run this path without GPUs.)"""

    def batched(ops: list[Message]) -> list[dist.Work]:
        p2p = [
            dist.P2POp(dist.isend if send else dist.irecv, tensor, peer, group=group, tag=tag)
            for send, tensor, peer, tag in ops
        ]
        return dist.batch_isend_irecv(p2p) if p2p else []

    return batched


def gloo_poster(group: dist.ProcessGroup | None) -> Callable[[list[Message]], list[dist.Work]]:
    """Post each message with the gloo ProcessGroup's own send/recv. Gloo posts each
    message on its own and never blocks, and torch's Python wrappers (group lookups,
    checks, coalescing) cost more CPU per message than gloo itself: on a CPU-bound
    machine that time comes out of the transfer."""
    pg = group if group is not None else dist.group.WORLD
    assert pg is not None
    to_group_rank: dict[int, int] = {}

    def direct(ops: list[Message]) -> list[dist.Work]:
        works = []
        for send, tensor, peer, tag in ops:
            if peer not in to_group_rank:
                to_group_rank[peer] = peer if group is None else dist.get_group_rank(group, peer)
            call = pg.send if send else pg.recv
            works.append(call([tensor], to_group_rank[peer], tag))
        return works

    return direct


class _FlatViews:
    """Each tensor's flat view in its storage order, made once per reallocation (None where
    a tensor is not in that order: its regions are then packed)."""

    def __init__(self, tensors: Mapping[str, torch.Tensor] | None, column_major: frozenset[str]):
        self.tensors = tensors
        self.column_major = column_major
        self.views: dict[str, torch.Tensor | None] = {}

    def get(self, name: str) -> torch.Tensor | None:
        if name not in self.views:
            assert self.tensors is not None
            self.views[name] = flat_view(self.tensors[name], name in self.column_major)
        return self.views[name]


def _steps(
    program: RankProgram,
    flats: tuple[_FlatViews, _FlatViews],
    dtype: torch.dtype,
    stats: MemoryStats,
    buffers: StoragePool,
) -> Iterator[tuple[_InFlight, list[Message]]]:
    """This rank's messages in the order it posts them, a step at a time, each step made
    only when asked for (its packing buffers are allocated then).

    First every transfer that goes straight from one tensor into the other, as one
    step: they need no memory, and built in one tight loop and posted together they
    start sooner than the plan's steps prepared one by one (measured on gloo with
    ``benchmarks/realloc.py``: per-step preparation left a reallocation about a tenth
    slower than the same messages built beforehand; this loop, within noise of
    them). Then the packed buckets, step by step. Both ends of a message agree on
    its group (``Transfer.span``), so each pair of ranks posts its messages in the
    same order, as NCCL needs.
    """
    flight = _InFlight(works=[])
    ops: list[Message] = []
    zero_copy = 0
    for transfer in program.direct:
        assert transfer.span is not None
        flat = flats[transfer.send].get(transfer.parts[0][0])
        if flat is None:
            # This rank's tensor is not in its storage order (a caller's tensor): pack the
            # message, and keep at most one such buffer per step so memory stays bounded.
            if flight.buffer_bytes:
                yield flight, ops
                flight, ops = _InFlight(works=[]), []
            _add_packed(flight, ops, transfer, flats, dtype, stats, buffers)
            continue
        ops.append(
            (transfer.send, flat[transfer.span[0] : transfer.span[1]], transfer.peer, transfer.tag)
        )
        zero_copy += transfer.nbytes
    stats.zero_copy_bytes += zero_copy
    if ops:
        yield flight, ops
    for step in program.packed:
        flight, ops = _InFlight(works=[]), []
        for transfer in step:
            _add_packed(flight, ops, transfer, flats, dtype, stats, buffers)
        yield flight, ops


def _add_packed(
    flight: _InFlight,
    ops: list[Message],
    transfer: Transfer,
    flats: tuple[_FlatViews, _FlatViews],
    dtype: torch.dtype,
    stats: MemoryStats,
    buffers: StoragePool,
) -> None:
    """Add one message through a packing buffer (``flats``: receiving side's, sending side's
    views); a send's pieces are packed into it now, a receive's unpacked when it is done."""
    tensors = flats[transfer.send].tensors
    assert tensors is not None
    first = tensors[transfer.parts[0][0]]
    message = buffers.empty((transfer.nbytes // dtype.itemsize,), dtype, first.device)
    flight.packed.append(message)
    flight.buffer_bytes += transfer.nbytes
    stats.messages += transfer.nbytes
    stats.alloc(transfer.nbytes)
    if transfer.send:
        # One copy per piece straight into the message (no intermediate
        # contiguous copies of sliced views, as reshape + cat would make).
        _scatter(message, _wire_views(tensors, transfer), into_message=True)
    else:
        flight.unpack.append((message, transfer))
    ops.append((transfer.send, message, transfer.peer, transfer.tag))


def _wire_views(tensors: Mapping[str, torch.Tensor], transfer: Transfer) -> list[torch.Tensor]:
    return [wire_view(tensors[name][index], cm) for name, index, cm in transfer.parts]


def _dense(tensor: torch.Tensor) -> bool:
    """Contiguous in row-major or (2-D) column-major order: one block, each element once."""
    return tensor.is_contiguous() or (tensor.dim() == 2 and tensor.t().is_contiguous())


def _scatter(message: torch.Tensor, views: list[torch.Tensor], *, into_message: bool) -> None:
    """Copy views into consecutive parts of a flat message, or those parts back into them."""
    offset = 0
    for view in views:
        part = message[offset : offset + view.numel()].view(view.shape)
        if into_message:
            part.copy_(view)
        else:
            view.copy_(part)
        offset += view.numel()


def _finish(
    flight: _InFlight,
    out: dict[str, torch.Tensor] | None,
    stats: MemoryStats,
    buffers: StoragePool,
) -> None:
    for work in flight.works:
        work.wait()
    for message, transfer in flight.unpack:
        assert out is not None
        unpack(message, transfer, out)
    for buffer in flight.packed:
        buffers.give(buffer)
    stats.free(flight.buffer_bytes)
