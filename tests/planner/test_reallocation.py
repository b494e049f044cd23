"""Bytes a reallocation moves, under the contract's layout conventions."""

from __future__ import annotations

import pytest

from rlhf_operator.api.models import PRESETS
from rlhf_operator.contract.sharding import ModelShape
from rlhf_operator.planner.cluster import Cluster, Mesh
from rlhf_operator.planner.profiles import load_profile
from rlhf_operator.planner.reallocation import transfer
from rlhf_operator.planner.workload import RoleModel

ROLE = RoleModel("actor", PRESETS["tiny"], dtype_bytes=4)
B = 4
SPLIT = (ROLE.layers * ROLE.layer_split_params + ROLE.embedding_params + ROLE.head_split_params) * B
REPL = (ROLE.layers * ROLE.layer_replicated_params + ROLE.head_replicated_params) * B


def cluster(nodes=1, per_node=8):
    return Cluster(nodes, per_node, load_profile("H100"))


def test_same_layout_moves_nothing():
    key = Mesh(0, 4).layout(2, 2, 1)
    assert transfer(ROLE, key, key, cluster()).total_bytes == 0


def test_tp_merge_in_place():
    # tp=2 -> dp=2 on the same two devices: each rank keeps its half, fetches the other half
    src = Mesh(0, 2).layout(1, 2, 1)
    dst = Mesh(0, 2).layout(2, 1, 1)
    got = transfer(ROLE, src, dst, cluster())
    assert got.total_bytes == pytest.approx(SPLIT, abs=2)
    assert got.max_inter_bytes == 0
    assert got.max_intra_bytes == pytest.approx(SPLIT / 2, abs=2)


def test_tp_split_needs_nothing():
    # dp=2 tp=1 -> tp=2: every rank already holds the whole model
    src = Mesh(0, 2).layout(2, 1, 1)
    dst = Mesh(0, 2).layout(1, 2, 1)
    assert transfer(ROLE, src, dst, cluster()).total_bytes == 0


def test_to_another_node_everything_crosses():
    src = Mesh(0, 8).layout(1, 8, 1)
    dst = Mesh(8, 8).layout(2, 4, 1)
    got = transfer(ROLE, src, dst, cluster(2, 8))
    # every destination rank needs its quarter of the split tensors and all replicated ones
    assert got.total_bytes == pytest.approx(8 * (SPLIT / 4 + REPL), abs=8)
    assert got.max_intra_bytes == 0
    assert got.seconds > got.max_inter_bytes / load_profile("H100").inter_node_bandwidth * 0.99


def test_pipeline_to_data_parallel():
    # pp=2 -> dp=2 on the same two devices: each rank lacks exactly the other stage
    src = Mesh(0, 2).layout(1, 1, 2)
    dst = Mesh(0, 2).layout(2, 1, 1)
    got = transfer(ROLE, src, dst, cluster())
    assert got.total_bytes == pytest.approx(ROLE.params * B, abs=2)


# --- the same count as the worker's reallocation planner ------------------------

PAIRS = [
    # (nodes, per_node, src (start, size, dp, tp, pp), dst (start, size, dp, tp, pp))
    (1, 8, (0, 8, 2, 4, 1), (0, 8, 8, 1, 1)),
    (1, 8, (0, 8, 1, 2, 4), (0, 4, 2, 2, 1)),
    (1, 8, (0, 4, 1, 4, 1), (4, 4, 2, 1, 2)),
    (2, 4, (0, 8, 1, 4, 2), (0, 8, 2, 2, 2)),
    (2, 4, (0, 4, 2, 2, 1), (4, 4, 1, 4, 1)),
    (2, 8, (0, 16, 2, 2, 4), (0, 8, 4, 2, 1)),
    (2, 8, (8, 8, 2, 1, 4), (0, 16, 4, 4, 1)),
]


@pytest.mark.parametrize("value_head", [False, True])
@pytest.mark.parametrize("case", PAIRS)
def test_matches_the_worker_planner(case, value_head):
    realloc = pytest.importorskip("rlhf_worker.realloc.plan")
    nodes, per_node, s, d = case
    arch = PRESETS["tiny"]
    role = RoleModel("critic" if value_head else "actor", arch, 4, value_head=value_head)
    shape = role.shape  # the planner's counts and the workers' plan: one model shape
    assert shape == ModelShape.from_architecture(arch, "value" if value_head else "lm")

    # One layout type: the planner's estimate and the workers' plan take the same layouts.
    src = Mesh(s[0], s[1]).layout(*s[2:])
    dst = Mesh(d[0], d[1]).layout(*d[2:])
    assert src.ranks == tuple(range(s[0], s[0] + s[1])) and (src.dp, src.tp, src.pp) == s[2:]
    got = transfer(role, src, dst, cluster(nodes, per_node))
    lacking = realloc.lacking_bytes(shape, src, dst, element_bytes=4)
    assert got.total_bytes == pytest.approx(sum(lacking.values()), abs=len(lacking))
    assert max(got.max_intra_bytes, got.max_inter_bytes) <= max(lacking.values()) + 1
    plan = realloc.plan_reallocation(shape, src, dst, per_node, element_bytes=4)
    intra, inter = realloc.bytes_by_locality(plan)
    assert got.total_bytes == pytest.approx(intra + inter, abs=len(lacking))
    assert got.intra_bytes == pytest.approx(intra, abs=len(lacking))
