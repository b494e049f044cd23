"""Which rows of an iteration's data each rank holds, and how to move them. Pure.

A call's per-sample data (responses, log-probabilities, values, ...) is split
over its data-parallel replicas by rows; every rank of a replica (all its tp
ranks and pp stages) holds the replica's rows, so any of them can send them.

Inference and generation calls give replica d the contiguous block d of the
batch. Train calls split the batch into `chunks` minibatches first and give
each replica its block of *every* minibatch, so each optimizer step sees a
whole minibatch spread over the replicas. Sequence-level data (one number per
sample: rewards, costs) is small and every rank gets all of it: group
statistics and reward normalisation need the whole batch.

`plan_rows` says, for every destination rank and every row segment it needs,
which source rank sends it (itself if it already holds the rows; else one on
its node; else the least loaded so far). Every rank computes the same plan.
"""

from __future__ import annotations

from dataclasses import dataclass

from rlhf_operator.contract.sharding import Layout

Segment = tuple[int, int]  # rows [start, stop)


def replica_segments(rows: int, dp: int, d: int, chunks: int = 1) -> list[Segment]:
    """The row segments replica `d` of `dp` holds when the batch is cut into `chunks` minibatches."""
    if rows % (dp * chunks):
        raise ValueError(f"{rows} rows do not split over dp {dp} x {chunks} minibatches")
    chunk, part = rows // chunks, rows // (chunks * dp)
    return [(m * chunk + d * part, m * chunk + (d + 1) * part) for m in range(chunks)]


def rank_segments(
    layout: Layout, rank: int, rows: int, chunks: int = 1, replicated: bool = False
) -> list[Segment]:
    """The row segments a rank of a layout holds (all rows when the data is replicated)."""
    if replicated:
        return [(0, rows)]
    _, d, _ = layout.coords(rank)
    return replica_segments(rows, layout.dp, d, chunks)


@dataclass(frozen=True)
class RowTransfer:
    """Rows of one data key sent from one rank to another (or copied, when both are one)."""

    src: int
    dst: int
    rows: Segment  # global rows
    dst_offset: int  # where the rows go in the destination's local tensor


def plan_rows(
    src: Layout,
    dst: Layout,
    rows: int,
    node_of: dict[int, int],
    src_chunks: int = 1,
    dst_chunks: int = 1,
    dst_replicated: bool = False,
) -> list[RowTransfer]:
    """Who sends which rows to whom. A transfer with src == dst is a local copy."""
    holders: list[tuple[Segment, list[int]]] = []
    for d in range(src.dp):
        ranks = [r for r in src.ranks if src.coords(r)[1] == d]
        for segment in replica_segments(rows, src.dp, d, src_chunks):
            holders.append((segment, ranks))
    sent = dict.fromkeys(src.ranks, 0)
    transfers: list[RowTransfer] = []
    for rank in dst.ranks:
        offset = 0
        for start, stop in rank_segments(dst, rank, rows, dst_chunks, dst_replicated):
            for (h_start, h_stop), ranks in sorted(holders):
                lo, hi = max(start, h_start), min(stop, h_stop)
                if lo >= hi:
                    continue
                sender = _sender(rank, ranks, node_of, sent)
                sent[sender] += hi - lo
                transfers.append(RowTransfer(sender, rank, (lo, hi), offset + lo - start))
            offset += stop - start
    return transfers


def _sender(rank: int, ranks: list[int], node_of: dict[int, int], sent: dict[int, int]) -> int:
    if rank in ranks:
        return rank
    same_node = [r for r in ranks if node_of.get(r) == node_of.get(rank)]
    pool = same_node or ranks
    return min(pool, key=lambda r: (sent[r], r))
