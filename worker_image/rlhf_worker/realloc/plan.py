"""Planning a reallocation: which slice of which parameter goes from which rank to which rank.

Pure and torch-free, so the operator's planner can count bytes with the same code
the workers execute. The plan is a deterministic function of its inputs: every
rank computes it independently and gets the same one.

How a plan is made:

1. For every destination rank and every parameter region it must hold
   (``rank_shards`` under the destination layout), intersect that region with
   the distinct regions of the source layout (they tile the full tensor: one
   per tensor-parallel index). A part the rank already holds in the source
   layout is a *local copy*; every other non-empty intersection is a *piece*
   to receive. This is exactly what the rank lacks, so bytes moved are minimal.
   Regions are intersected as boxes, so any tp, pp and dp change works,
   including tp sizes that do not divide each other.
2. Each piece gets exactly one sender among the ranks holding it (data-parallel
   replicas, and both pipeline ends for tied embeddings): a sender on the
   destination's node if there is one, then the least loaded so far.
3. Pieces are grouped per (sender, receiver) pair into buckets of at most
   ``bucket_bytes`` (a piece larger than that is cut along the dimension its
   memory is major in: the first, or the last for a column-major weight).
   A piece of ``solo_bytes`` or more travels alone so it can go straight from
   and into the tensors without packing; smaller ones are packed together so
   many small tensors do not mean many messages.
4. Buckets are ordered into *steps*: in one step every rank sends at most one
   bucket and receives at most one. Steps are independent, so the executor
   keeps a few in flight (overlap) while the memory it needs stays bounded by
   a few buckets; buckets that go straight from tensor to tensor need no
   memory and are posted all together (``execute.py``).
5. Each rank's part (``ReallocPlan.program``) lists its messages step by step
   and its local copies, with every index into its own tensors worked out, once
   per plan and rank: the executor runs it every iteration without recomputing
   anything, which matters where the transfer is CPU-bound and every cycle of
   bookkeeping is taken from it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from rlhf_operator.contract.sharding import (
    Layout,
    ModelShape,
    Region,
    param_stages,
    rank_shards,
    region_numel,
    shard_region,
)

DEFAULT_BUCKET_BYTES = 32 << 20
# A chunk of at least this many bytes (or a quarter of a bucket, if less) travels
# alone: straight from and into the tensors, without a packing copy. Below that,
# the cost of a message outweighs the copy, so chunks are packed. (On gloo, measured
# with benchmarks/realloc.py, 128 KB edged out 256 KB: the 196 KB k/v slices of
# its tp4 layouts then go straight through instead of being packed and unpacked.)
DEFAULT_SOLO_BYTES = 128 << 10


@dataclass(frozen=True)
class Piece:
    """A region of one parameter (full-tensor coordinates) that goes from src to dst."""

    name: str
    region: Region
    src: int
    dst: int
    nbytes: int


@dataclass(frozen=True)
class LocalCopy:
    """A region a destination rank already holds in the source layout: copied, not sent."""

    rank: int
    name: str
    region: Region
    nbytes: int


@dataclass(frozen=True)
class Bucket:
    """One message: pieces from one sender to one receiver, concatenated in order."""

    src: int
    dst: int
    pieces: tuple[Piece, ...]

    @property
    def nbytes(self) -> int:
        return sum(p.nbytes for p in self.pieces)


Index = tuple[slice, ...]  # a region's place inside a local tensor holding a bigger region


@dataclass(frozen=True)
class Transfer:
    """One bucket as one of its two ranks sees it: which peer, and where its pieces are in
    this rank's own tensors (source shards when sending, destination shards when receiving)."""

    send: bool
    peer: int
    tag: int  # the bucket's index: both ends name the message by it
    nbytes: int
    # (parameter, index, column-major), in the bucket's order; a column-major
    # parameter's pieces travel transposed (``storage.wire_view``).
    parts: tuple[tuple[str, Index, bool], ...]
    # For a bucket of one piece that is one block of memory in the tensors at both
    # ends (each in its storage order): that block's [start, stop) in this rank's
    # flattened tensor. The message is then a slice of it, sent from or received into
    # the tensor itself. Both ends decide it alike, so both post it in the same group
    # of messages (``RankProgram.direct``). (With today's shardings, where every layout
    # splits a parameter along the same dimension, a block at one end is a block at
    # the other; deciding from both ends keeps the two in step if that changes.)
    span: tuple[int, int] | None = None


@dataclass(frozen=True)
class RankProgram:
    """Everything one rank does in a plan, in order, with every index precomputed."""

    steps: tuple[tuple[Transfer, ...], ...]  # only the plan's steps this rank takes part in
    copies: tuple[tuple[str, Index, Index], ...]  # (parameter, destination index, source index)
    # Destination shards that are one block of memory inside this rank's source shard of
    # the same parameter (or that shard whole), with their index in it: a transient copy
    # that is only read can be that view of the source shard (``alias_local``).
    views: tuple[tuple[str, Index], ...]
    # The same transfers split by how they travel, each in step order: straight from one
    # tensor into another (those with a span), and the packed ones, step by step.
    direct: tuple[Transfer, ...]
    packed: tuple[tuple[Transfer, ...], ...]


@dataclass(frozen=True)
class ReallocPlan:
    model: ModelShape
    src: Layout
    dst: Layout
    element_bytes: int
    bucket_bytes: int
    src_shards: dict[int, dict[str, Region]]  # what each source rank holds
    dst_shards: dict[int, dict[str, Region]]  # what each destination rank ends with
    node_of: dict[int, int]  # node of every rank in either layout
    column_major: frozenset[str]  # parameters stored (and sent) column-major
    local: tuple[LocalCopy, ...]
    pieces: tuple[Piece, ...]  # every transfer, before cutting into buckets
    buckets: tuple[Bucket, ...]
    steps: tuple[tuple[int, ...], ...]  # bucket indices, one send and one receive per rank
    # Each rank's program, made on first use: a plan is kept and rerun every
    # iteration (the worker's runtime keeps one per layout pair).
    _programs: dict[int, RankProgram] = field(default_factory=dict, compare=False, repr=False)

    def program(self, rank: int) -> RankProgram:
        """This rank's part of the plan (``rank_program``), computed once per plan and rank."""
        found = self._programs.get(rank)
        if found is None:
            found = self._programs[rank] = rank_program(self, rank)
        return found


RankNode = Callable[[int], int] | int


def node_function(rank_node: RankNode) -> Callable[[int], int]:
    """A rank -> node function, from a function or from a number of devices per node."""
    if callable(rank_node):
        return rank_node
    devices_per_node = rank_node
    if devices_per_node < 1:
        raise ValueError(f"devices per node must be >= 1, got {devices_per_node}")
    return lambda rank: rank // devices_per_node


def intersect(a: Region, b: Region) -> Region | None:
    """The box both regions cover, or None if they do not overlap."""
    out = tuple((max(a0, b0), min(a1, b1)) for (a0, a1), (b0, b1) in zip(a, b, strict=True))
    return out if all(start < stop for start, stop in out) else None


def contains(outer: Region, inner: Region) -> bool:
    return all(o0 <= i0 and i1 <= o1 for (o0, o1), (i0, i1) in zip(outer, inner, strict=True))


def region_shape(region: Region) -> tuple[int, ...]:
    return tuple(stop - start for start, stop in region)


def source_holders(model: ModelShape, src: Layout) -> dict[str, list[tuple[Region, list[int]]]]:
    """For every parameter, its distinct source regions (they tile it) and the ranks holding each."""
    out: dict[str, list[tuple[Region, list[int]]]] = {}
    for param in model.params():
        stages = param_stages(param, model.num_layers, src.pp)
        by_region: dict[Region, list[int]] = {}
        for t in range(src.tp):
            # A replicated parameter has one region, held by every tp rank.
            holders = by_region.setdefault(shard_region(param, src.tp, t), [])
            holders += [src.rank(p, d, t) for p in stages for d in range(src.dp)]
        out[param.name] = list(by_region.items())
    return out


def lacking_bytes(
    model: ModelShape, src: Layout, dst: Layout, element_bytes: int = 4
) -> dict[int, int]:
    """The minimum each destination rank must receive: its regions minus what it holds already.

    Computed directly from the layouts (no sender choice), so it checks the plan
    and serves a cost model that only needs the volume.
    """
    out: dict[int, int] = {}
    for rank in dst.ranks:
        own = rank_shards(model, src, rank) if rank in src.ranks else {}
        total = 0
        for name, region in rank_shards(model, dst, rank).items():
            have = intersect(region, own[name]) if name in own else None
            total += region_numel(region) - (region_numel(have) if have else 0)
        out[rank] = total * element_bytes
    return out


def plan_reallocation(
    model: ModelShape,
    src: Layout,
    dst: Layout,
    rank_node: RankNode,
    *,
    element_bytes: int = 4,
    bucket_bytes: int = DEFAULT_BUCKET_BYTES,
    solo_bytes: int | None = None,
) -> ReallocPlan:
    """Plan moving a role's parameters from the source layout to the destination layout."""
    for layout, what in ((src, "source"), (dst, "destination")):
        problems = model.layout_problems(pp=layout.pp, tp=layout.tp)
        if problems:
            raise ValueError(f"{what} layout cannot shard this model: {'; '.join(problems)}")
    if bucket_bytes < element_bytes:
        raise ValueError(f"bucket of {bucket_bytes} bytes cannot hold one element")
    node = node_function(rank_node)
    src_shards = {r: rank_shards(model, src, r) for r in src.ranks}
    dst_shards = {r: rank_shards(model, dst, r) for r in dst.ranks}
    node_of = {r: node(r) for r in sorted({*src.ranks, *dst.ranks})}
    holders = source_holders(model, src)

    local: list[LocalCopy] = []
    pieces: list[Piece] = []
    sent: dict[int, int] = dict.fromkeys(src.ranks, 0)
    for rank in dst.ranks:
        for name, want in dst_shards[rank].items():
            for region, ranks in holders[name]:
                part = intersect(want, region)
                if part is None:
                    continue
                nbytes = region_numel(part) * element_bytes
                if rank in ranks:
                    local.append(LocalCopy(rank, name, part, nbytes))
                    continue
                sender = _choose_sender(rank, ranks, node_of, sent)
                sent[sender] += nbytes
                pieces.append(Piece(name, part, sender, rank, nbytes))

    solo = min(DEFAULT_SOLO_BYTES, bucket_bytes // 4) if solo_bytes is None else solo_bytes
    column_major = frozenset(p.name for p in model.params() if p.column_major)
    buckets = _bucketize(pieces, bucket_bytes, solo, column_major)
    return ReallocPlan(
        model=model,
        src=src,
        dst=dst,
        element_bytes=element_bytes,
        bucket_bytes=bucket_bytes,
        src_shards=src_shards,
        dst_shards=dst_shards,
        node_of=node_of,
        column_major=column_major,
        local=tuple(local),
        pieces=tuple(pieces),
        buckets=tuple(buckets),
        steps=_schedule(buckets),
    )


def _choose_sender(
    rank: int, ranks: list[int], node_of: dict[int, int], sent: dict[int, int]
) -> int:
    same_node = [r for r in ranks if node_of[r] == node_of[rank]]
    pool = same_node or ranks
    # Least loaded; ties broken by a rotation that depends on the receiver, so
    # equal replicas take turns rather than the first one always winning.
    return min(pool, key=lambda r: (sent[r], (pool.index(r) - rank) % len(pool)))


def _cut(piece: Piece, bucket_bytes: int, dim: int) -> list[Piece]:
    """Cut a piece along ``dim`` into chunks of at most a bucket (or one slice of it).

    ``dim`` is the dimension the tensor's memory is major in, so that each chunk
    stays one contiguous block of a contiguous piece.
    """
    if piece.nbytes <= bucket_bytes:
        return [piece]
    start, stop = piece.region[dim]
    slice_bytes = piece.nbytes // (stop - start)
    width = max(1, bucket_bytes // slice_bytes)
    out = []
    for lo in range(start, stop, width):
        hi = min(stop, lo + width)
        region = (*piece.region[:dim], (lo, hi), *piece.region[dim + 1 :])
        out.append(Piece(piece.name, region, piece.src, piece.dst, (hi - lo) * slice_bytes))
    return out


def _bucketize(
    pieces: Iterable[Piece],
    bucket_bytes: int,
    solo_bytes: int,
    column_major: frozenset[str],
) -> list[Bucket]:
    by_pair: dict[tuple[int, int], list[Piece]] = {}
    for piece in pieces:
        by_pair.setdefault((piece.src, piece.dst), []).append(piece)
    buckets: list[Bucket] = []
    for (src, dst), pair_pieces in sorted(by_pair.items()):
        packed: list[Piece] = []
        packed_bytes = 0
        for piece in pair_pieces:
            dim = len(piece.region) - 1 if piece.name in column_major else 0
            for chunk in _cut(piece, bucket_bytes, dim):
                if chunk.nbytes >= solo_bytes:
                    buckets.append(Bucket(src, dst, (chunk,)))
                    continue
                if packed_bytes + chunk.nbytes > bucket_bytes:
                    buckets.append(Bucket(src, dst, tuple(packed)))
                    packed, packed_bytes = [], 0
                packed.append(chunk)
                packed_bytes += chunk.nbytes
        if packed:
            buckets.append(Bucket(src, dst, tuple(packed)))
    return buckets


def _schedule(buckets: list[Bucket]) -> tuple[tuple[int, ...], ...]:
    """Order buckets into steps where each rank sends at most one and receives at most one.

    A greedy matching per step, busiest pairs first (by the bytes their sender
    and receiver still have to move), which keeps the number of steps close to
    the busiest rank's bucket count.
    """
    queues: dict[tuple[int, int], list[int]] = {}
    send_left: dict[int, int] = {}
    recv_left: dict[int, int] = {}
    for index, bucket in enumerate(buckets):
        queues.setdefault((bucket.src, bucket.dst), []).append(index)
        send_left[bucket.src] = send_left.get(bucket.src, 0) + bucket.nbytes
        recv_left[bucket.dst] = recv_left.get(bucket.dst, 0) + bucket.nbytes
    for queue in queues.values():
        queue.reverse()  # pop() from the end takes them in order
    steps: list[tuple[int, ...]] = []
    while queues:
        order = sorted(queues, key=lambda pair: (-(send_left[pair[0]] + recv_left[pair[1]]), pair))
        busy_send: set[int] = set()
        busy_recv: set[int] = set()
        step = []
        for src, dst in order:
            if src in busy_send or dst in busy_recv:
                continue
            busy_send.add(src)
            busy_recv.add(dst)
            index = queues[(src, dst)].pop()
            step.append(index)
            send_left[src] -= buckets[index].nbytes
            recv_left[dst] -= buckets[index].nbytes
            if not queues[(src, dst)]:
                del queues[(src, dst)]
        steps.append(tuple(sorted(step)))
    return tuple(steps)


def local_index(region: Region, base: Region) -> Index:
    """Where a full-tensor region lies inside a local tensor that holds region ``base``."""
    return tuple(slice(r0 - b0, r1 - b0) for (r0, r1), (b0, _) in zip(region, base, strict=True))


def storage_span(region: Region, base: Region, column_major: bool) -> tuple[int, int] | None:
    """Where ``region`` lies in the memory of a tensor holding ``base``, as a [start, stop)
    range of its elements in storage order (row-major, or column-major for a 2-D
    ``column_major`` tensor); None if the region is not one block of that memory.

    It is one block when, in storage order, every dimension before the last one it
    cuts has extent one.
    """
    index = local_index(region, base)
    extents = [b1 - b0 for b0, b1 in base]
    if column_major:
        index, extents = index[::-1], extents[::-1]
    cut = [d for d, (s, n) in enumerate(zip(index, extents, strict=True)) if s.stop - s.start != n]
    if cut and any(s.stop - s.start != 1 for s in index[: cut[-1]]):
        return None
    start, stride = 0, 1
    for s, n in zip(reversed(index), reversed(extents), strict=True):
        start += s.start * stride
        stride *= n
    return start, start + region_numel(region)


def block_within(inner: Region, outer: Region, column_major: bool) -> bool:
    """Whether a tensor holding ``inner`` can be a view of one holding ``outer`` that keeps
    its storage order: ``inner`` lies inside ``outer`` as one block of its memory."""
    return contains(outer, inner) and storage_span(inner, outer, column_major) is not None


def housing_indices(plan: ReallocPlan, rank: int) -> dict[str, Index]:
    """The parameters whose source shard on ``rank`` is one block of memory inside, and
    smaller than, its destination shard, with the source shard's index in it.

    Kept inside a buffer shaped as its destination shard (``copies.house``), such a
    source shard is already in place when the plan runs into that buffer: the rank's
    local copy of it is skipped, and only the bytes it lacks arrive around it
    (HybridFlow's zero-redundancy resharding).
    """
    src_regions = plan.src_shards.get(rank, {})
    dst_regions = plan.dst_shards.get(rank, {})
    return {
        name: local_index(src, dst_regions[name])
        for name, src in src_regions.items()
        if name in dst_regions
        and src != dst_regions[name]
        and block_within(src, dst_regions[name], name in plan.column_major)
    }


def rank_program(plan: ReallocPlan, rank: int) -> RankProgram:
    """One rank's messages, step by step, and its local copies, located in its own tensors.

    A rank outside both layouts gets an empty program. Local copies are listed even
    where the executor need not make them: it skips every one whose destination is
    the very memory of its source (a destination shard that is a view of the source
    shard, ``alias_local``, or a source shard kept inside its destination shard,
    ``housing_indices``).
    """
    src_regions = plan.src_shards.get(rank, {})
    dst_regions = plan.dst_shards.get(rank, {})

    def transfer(index: int, send: bool) -> Transfer:
        bucket = plan.buckets[index]
        regions = src_regions if send else dst_regions
        parts = tuple(
            (p.name, local_index(p.region, regions[p.name]), p.name in plan.column_major)
            for p in bucket.pieces
        )
        peer = bucket.dst if send else bucket.src
        span = None
        if len(bucket.pieces) == 1:
            piece = bucket.pieces[0]
            column_major = piece.name in plan.column_major
            peer_regions = (plan.dst_shards if send else plan.src_shards)[peer]
            if storage_span(piece.region, peer_regions[piece.name], column_major) is not None:
                span = storage_span(piece.region, regions[piece.name], column_major)
        return Transfer(send, peer, index, bucket.nbytes, parts, span)

    steps = []
    for step in plan.steps:
        mine = []
        for index in step:
            if plan.buckets[index].src == rank:
                mine.append(transfer(index, send=True))
            if plan.buckets[index].dst == rank:
                mine.append(transfer(index, send=False))
        if mine:
            steps.append(tuple(mine))
    copies = tuple(
        (
            copy.name,
            local_index(copy.region, dst_regions[copy.name]),
            local_index(copy.region, src_regions[copy.name]),
        )
        for copy in plan.local
        if copy.rank == rank
    )
    views = tuple(
        (name, local_index(region, src_regions[name]))
        for name, region in dst_regions.items()
        if name in src_regions
        and block_within(region, src_regions[name], name in plan.column_major)
    )
    direct = tuple(t for step in steps for t in step if t.span is not None)
    packed = tuple(part for step in steps if (part := tuple(t for t in step if t.span is None)))
    return RankProgram(tuple(steps), copies, views, direct, packed)


# --- byte accounting, for tests, the benchmark and the operator's cost model ---


def bytes_moved(plan: ReallocPlan) -> int:
    """Bytes that cross between ranks (local copies excluded)."""
    return sum(p.nbytes for p in plan.pieces)


def bytes_received(plan: ReallocPlan) -> dict[int, int]:
    out = dict.fromkeys(plan.dst.ranks, 0)
    for p in plan.pieces:
        out[p.dst] += p.nbytes
    return out


def bytes_sent(plan: ReallocPlan) -> dict[int, int]:
    out = dict.fromkeys(plan.src.ranks, 0)
    for p in plan.pieces:
        out[p.src] += p.nbytes
    return out


def bytes_by_locality(plan: ReallocPlan) -> tuple[int, int]:
    """(intra-node bytes, inter-node bytes) moved."""
    intra = sum(p.nbytes for p in plan.pieces if plan.node_of[p.src] == plan.node_of[p.dst])
    return intra, bytes_moved(plan) - intra


def bytes_by_pair(plan: ReallocPlan) -> dict[tuple[int, int], int]:
    """Bytes per (sender, receiver)."""
    out: dict[tuple[int, int], int] = {}
    for p in plan.pieces:
        out[(p.src, p.dst)] = out.get((p.src, p.dst), 0) + p.nbytes
    return out


def local_bytes(plan: ReallocPlan) -> int:
    """Bytes destination ranks copy from their own source shards."""
    return sum(c.nbytes for c in plan.local)
