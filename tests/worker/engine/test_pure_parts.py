"""Pure helpers of the parallel machinery: group plans, dp shares, micro-batches."""

from __future__ import annotations

import pytest
import torch

from rlhf_operator.contract.sharding import Layout
from rlhf_worker.engine import split_batch
from rlhf_worker.parallel import dp_slice, layout_group_ranks


def test_group_plan_is_fixed_and_complete() -> None:
    layout = Layout(ranks=(5, 4, 3, 2, 1, 0, 7, 6), pp=2, dp=2, tp=2)
    plan = layout_group_ranks(layout)
    assert plan == layout_group_ranks(Layout(ranks=layout.ranks, pp=2, dp=2, tp=2))
    assert plan[0] == layout.ranks
    for p in range(2):
        for d in range(2):
            assert layout.tp_group(p, d) in plan
    for d in range(2):
        for t in range(2):
            assert layout.pp_group(d, t) in plan
    assert all(len(ranks) > 1 for ranks in plan)


def test_tied_embedding_groups_only_beyond_two_stages() -> None:
    two = layout_group_ranks(Layout(ranks=(0, 1), pp=2))
    assert two == [(0, 1), (0, 1)]  # the whole layout and the pp group, which serves the tie
    four = layout_group_ranks(Layout(ranks=(0, 1, 2, 3), pp=4))
    assert four[-1] == (0, 3)


def test_single_rank_layout_needs_no_group() -> None:
    assert layout_group_ranks(Layout(ranks=(3,))) == []


@pytest.mark.parametrize(("total", "dp"), [(4, 2), (5, 2), (7, 4), (3, 1)])
def test_dp_slices_partition_the_batch(total: int, dp: int) -> None:
    covered = [i for d in range(dp) for i in range(total)[dp_slice(total, dp, d)]]
    assert covered == list(range(total))


def test_split_batch_keeps_rows_together() -> None:
    batch = {"input_ids": torch.arange(10).view(5, 2), "x": torch.arange(5)}
    parts = split_batch(batch, 2)
    assert [p["x"].tolist() for p in parts] == [[0, 1, 2], [3, 4]]
    assert torch.equal(torch.cat([p["input_ids"] for p in parts]), batch["input_ids"])
    assert len(split_batch(batch, 9)) == 5
