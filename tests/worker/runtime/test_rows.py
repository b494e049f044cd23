"""Row partitions and row-transfer plans (no processes)."""

from __future__ import annotations

import itertools

import pytest

from rlhf_operator.contract.sharding import Layout
from rlhf_worker.runtime.rows import plan_rows, rank_segments, replica_segments


def test_replicas_of_a_train_call_hold_their_block_of_every_minibatch() -> None:
    assert replica_segments(16, dp=2, d=0, chunks=2) == [(0, 4), (8, 12)]
    assert replica_segments(16, dp=2, d=1, chunks=2) == [(4, 8), (12, 16)]
    assert replica_segments(16, dp=4, d=3) == [(12, 16)]
    with pytest.raises(ValueError, match="do not split"):
        replica_segments(10, dp=4, d=0)


def test_every_rank_of_a_replica_holds_the_same_rows() -> None:
    layout = Layout(ranks=(0, 1, 2, 3), dp=2, tp=2)
    assert rank_segments(layout, 0, 8) == rank_segments(layout, 1, 8) == [(0, 4)]
    assert rank_segments(layout, 3, 8) == [(4, 8)]
    assert rank_segments(layout, 3, 8, replicated=True) == [(0, 8)]


LAYOUTS = [
    Layout(ranks=(0, 1, 2, 3), dp=4),
    Layout(ranks=(0, 1, 2, 3), dp=2, tp=2),
    Layout(ranks=(2, 3), dp=2),
    Layout(ranks=(1,)),
    Layout(ranks=(0, 1, 2, 3), pp=2, tp=2),
]


@pytest.mark.parametrize(("src", "dst"), list(itertools.product(LAYOUTS, LAYOUTS)))
@pytest.mark.parametrize(
    ("src_chunks", "dst_chunks", "replicated"), [(1, 1, False), (1, 2, False), (2, 1, True)]
)
def test_each_destination_gets_exactly_its_rows_from_a_holder(
    src: Layout, dst: Layout, src_chunks: int, dst_chunks: int, replicated: bool
) -> None:
    rows = 16
    node_of = {r: r // 2 for r in range(4)}
    transfers = plan_rows(src, dst, rows, node_of, src_chunks, dst_chunks, replicated)
    for rank in dst.ranks:
        mine = [t for t in transfers if t.dst == rank]
        want = rank_segments(dst, rank, rows, dst_chunks, replicated)
        got_rows = sorted(r for t in mine for r in range(*t.rows))
        assert got_rows == sorted(r for s in want for r in range(*s))
        local = sorted((t.dst_offset, t.dst_offset + t.rows[1] - t.rows[0]) for t in mine)
        assert [a for a, _ in local] == list(
            itertools.accumulate([0] + [b - a for a, b in local[:-1]])
        )
        for t in mine:
            held = rank_segments(src, t.src, rows, src_chunks) if t.src in src.ranks else []
            assert any(a <= t.rows[0] and t.rows[1] <= b for a, b in held)
            if rank in src.ranks and any(
                a <= t.rows[0] and t.rows[1] <= b
                for a, b in rank_segments(src, rank, rows, src_chunks)
            ):
                assert t.src == rank  # what a rank already holds is never sent to it
