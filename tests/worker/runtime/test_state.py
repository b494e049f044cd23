"""A role's state on a rank (no processes)."""

from __future__ import annotations

import pytest

from rlhf_operator.contract.sharding import Layout
from rlhf_worker.model.config import ModelConfig
from rlhf_worker.model.tiny import tiny_hf_config
from rlhf_worker.runtime.state import RoleState


def role(home: Layout) -> RoleState:
    return RoleState("actor", ModelConfig.from_hf(tiny_hf_config()), home)


def test_reallocation_plans_are_made_once_per_pair_of_layouts() -> None:
    train, gen = Layout((0, 1), tp=2), Layout((0, 1), dp=2)
    state = role(train)
    first = state.plan(train, gen, lambda rank: 0, 4)
    assert state.plan(train, gen, lambda rank: 0, 4) is first
    back = state.plan(gen, train, lambda rank: 0, 4)
    assert back is not first and back.src == gen and back.dst == train
    assert sum(p.nbytes for p in first.pieces) > 0


def test_a_role_without_a_copy_under_a_layout_says_so() -> None:
    state = role(Layout((0,)))
    with pytest.raises(RuntimeError, match="no copy under layout"):
        state.on(Layout((0, 1), dp=2))
