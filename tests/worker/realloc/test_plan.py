"""The reallocation planner, without processes: minimal, exact, local first, balanced."""

from __future__ import annotations

import itertools
import subprocess
import sys

from hypothesis import given, settings
from hypothesis import strategies as st

from rlhf_operator.contract.sharding import Layout, ModelShape, Region, region_numel
from rlhf_worker.realloc.plan import (
    ReallocPlan,
    block_within,
    bytes_by_locality,
    bytes_by_pair,
    bytes_moved,
    bytes_received,
    bytes_sent,
    contains,
    housing_indices,
    intersect,
    lacking_bytes,
    local_bytes,
    local_index,
    plan_reallocation,
    rank_program,
    storage_span,
)
from tests.worker.realloc.cases import GQA, MODELS


@st.composite
def layouts(draw: st.DrawFn, model: ModelShape, world: int) -> Layout:
    tp = draw(st.sampled_from([t for t in (1, 2, 3, 4, 6) if not model.layout_problems(1, t)]))
    pp = draw(st.integers(1, min(3, model.num_layers)))
    dp = draw(st.integers(1, 4))
    if tp * pp * dp > world:
        dp = 1
    if tp * pp * dp > world:
        pp = 1
    ranks = draw(st.permutations(range(world)))[: tp * pp * dp]
    return Layout(tuple(ranks), pp=pp, dp=dp, tp=tp)


@st.composite
def plan_inputs(draw: st.DrawFn) -> tuple[str, Layout, Layout, int, int]:
    """(model name, src, dst, devices per node, bucket bytes): small to print on failure."""
    name = draw(st.sampled_from(sorted(MODELS)))
    world = draw(st.integers(6, 12))
    src = draw(layouts(MODELS[name], world))
    dst = draw(layouts(MODELS[name], world))
    per_node = draw(st.sampled_from([1, 2, 4, 8, 64]))
    bucket = draw(st.sampled_from([4, 64, 300, 1024, 1 << 20]))
    return name, src, dst, per_node, bucket


def make_plan(inputs: tuple[str, Layout, Layout, int, int]) -> ReallocPlan:
    name, src, dst, per_node, bucket = inputs
    return plan_reallocation(MODELS[name], src, dst, per_node, bucket_bytes=bucket)


def check_plan(plan: ReallocPlan) -> None:
    """Every invariant a plan must satisfy."""
    holders = {
        name: [r for r in plan.src.ranks if name in plan.src_shards[r]]
        for name in (param.name for param in plan.model.params())
    }
    # Each destination region is covered exactly once, by local copies and pieces.
    parts: dict[tuple[int, str], list[tuple[tuple[int, int], ...]]] = {}
    for c in plan.local:
        assert contains(plan.src_shards[c.rank][c.name], c.region)
        parts.setdefault((c.rank, c.name), []).append(c.region)
    for p in plan.pieces:
        # The sender holds what it sends; the receiver does not hold any of it.
        assert p.src != p.dst
        assert contains(plan.src_shards[p.src][p.name], p.region)
        own = plan.src_shards.get(p.dst, {}).get(p.name)
        assert own is None or intersect(own, p.region) is None
        assert p.nbytes == region_numel(p.region) * plan.element_bytes
        parts.setdefault((p.dst, p.name), []).append(p.region)
        # Same node first: a remote sender only if no holder shares the receiver's node.
        if plan.node_of[p.src] != plan.node_of[p.dst]:
            assert not any(
                plan.node_of[r] == plan.node_of[p.dst]
                and contains(plan.src_shards[r][p.name], p.region)
                for r in holders[p.name]
            )
    for rank, shards in plan.dst_shards.items():
        for name, want in shards.items():
            got = parts.pop((rank, name))
            assert all(contains(want, r) for r in got)
            assert sum(region_numel(r) for r in got) == region_numel(want)
            assert all(intersect(a, b) is None for a, b in itertools.combinations(got, 2))
    assert not parts
    # Bytes moved are the minimum: what each destination lacks.
    assert bytes_received(plan) == lacking_bytes(plan.model, plan.src, plan.dst, plan.element_bytes)
    assert sum(bytes_sent(plan).values()) == bytes_moved(plan) == sum(bytes_by_pair(plan).values())
    assert sum(bytes_by_locality(plan)) == bytes_moved(plan)
    # Buckets carry exactly the pieces, cut but not changed, in bounded messages.
    chunks = [(c, b) for b in plan.buckets for c in b.pieces]
    assert sum(c.nbytes for c, _ in chunks) == bytes_moved(plan)
    for chunk, bucket in chunks:
        assert (chunk.src, chunk.dst) == (bucket.src, bucket.dst)
        assert any(
            contains(p.region, chunk.region)
            for p in plan.pieces
            if p.name == chunk.name and (p.src, p.dst) == (chunk.src, chunk.dst)
        )
    for bucket in plan.buckets:
        # Only a single slice (a row, or a column of a column-major weight) may be bigger.
        first = bucket.pieces[0]
        (start, stop) = first.region[-1 if first.name in plan.column_major else 0]
        one_slice = len(bucket.pieces) == 1 and stop == start + 1
        assert bucket.nbytes <= plan.bucket_bytes or one_slice
    # Steps: every bucket once; a rank sends and receives at most one bucket per step.
    scheduled = sorted(i for step in plan.steps for i in step)
    assert scheduled == list(range(len(plan.buckets)))
    for step in plan.steps:
        assert len({plan.buckets[i].src for i in step}) == len(step)
        assert len({plan.buckets[i].dst for i in step}) == len(step)


@settings(max_examples=150, deadline=None)
@given(plan_inputs())
def test_random_plans_are_exact_and_minimal(inputs: tuple[str, Layout, Layout, int, int]) -> None:
    check_plan(make_plan(inputs))


@settings(max_examples=60, deadline=None)
@given(plan_inputs())
def test_replicas_share_the_load_on_one_node(inputs: tuple[str, Layout, Layout, int, int]) -> None:
    # On a single node every piece may come from any replica; the greedy choice keeps
    # the replicas of each (stage, tp index) within one piece of each other.
    name, src, dst, _, _ = inputs
    plan = plan_reallocation(MODELS[name], src, dst, 1 << 20)
    sent = bytes_sent(plan)
    biggest = max((p.nbytes for p in plan.pieces), default=0)
    for p_, t in itertools.product(range(src.pp), range(src.tp)):
        loads = [sent[r] for r in src.dp_group(p_, t)]
        assert max(loads) - min(loads) <= biggest


def test_identical_layouts_move_nothing() -> None:
    layout = Layout(tuple(range(8)), pp=2, dp=2, tp=2)
    plan = plan_reallocation(GQA, layout, layout, 8)
    assert bytes_moved(plan) == 0 and not plan.buckets and not plan.steps
    assert local_bytes(plan) == sum(
        region_numel(r) * 4 for shards in plan.dst_shards.values() for r in shards.values()
    )


def test_tp_split_is_local_and_merge_takes_the_missing_half() -> None:
    # tp2 -> tp4: ranks 0 and 1 already hold the quarter they keep (local copies);
    # ranks 2 and 3 are new and receive all their shards, replicated norms included.
    src = Layout((0, 1), tp=2)
    dst = Layout((0, 1, 2, 3), tp=4)
    plan = plan_reallocation(GQA, src, dst, 4)
    check_plan(plan)
    received = bytes_received(plan)
    assert received[0] == 0
    whole = sum(p.numel for p in GQA.params()) * 4
    assert received[2] == received[3] > 0
    assert received[2] + received[3] > whole // 2  # the two new ranks get half, plus norms
    # tp4 -> tp2: each merged rank lacks exactly the quarter it did not hold.
    back = plan_reallocation(GQA, dst, src, 4)
    check_plan(back)
    assert bytes_received(back) == lacking_bytes(GQA, dst, src)


def test_prefers_same_node_then_spreads_over_replicas() -> None:
    # Source: 4 replicas, two on node 0 (ranks 0, 1) and two on node 1 (ranks 4, 5).
    src = Layout((0, 1, 4, 5), dp=4)
    dst = Layout((2, 3, 6, 7), tp=4)
    plan = plan_reallocation(GQA, src, dst, 4)
    check_plan(plan)
    intra, inter = bytes_by_locality(plan)
    assert inter == 0 and intra == bytes_moved(plan)
    sent = bytes_sent(plan)
    for a, b in ((0, 1), (4, 5)):
        assert abs(sent[a] - sent[b]) <= max(p.nbytes for p in plan.pieces)
    # With the replicas all on another node, everything crosses nodes, spread over them.
    remote = plan_reallocation(GQA, Layout((4, 5, 6, 7), dp=4), Layout((0, 1, 2, 3), tp=4), 4)
    check_plan(remote)
    assert bytes_by_locality(remote)[0] == 0
    loads = sorted(bytes_sent(remote).values())
    assert loads[0] > 0 and loads[-1] - loads[0] <= max(p.nbytes for p in remote.pieces)


def test_a_rank_node_function_is_accepted() -> None:
    src = Layout((0, 1), dp=2)
    dst = Layout((2, 3), dp=2)
    # Rank 2 shares a node with rank 1, rank 3 with rank 0.
    plan = plan_reallocation(GQA, src, dst, {0: 0, 1: 1, 2: 1, 3: 0}.__getitem__)
    assert {(p.src, p.dst) for p in plan.pieces} == {(1, 2), (0, 3)}


def test_big_pieces_are_cut_small_ones_packed() -> None:
    src = Layout((0,))
    dst = Layout((1,))
    plan = plan_reallocation(GQA, src, dst, 1, bucket_bytes=1024)
    check_plan(plan)
    # The 40x32 embedding (5120 bytes) is cut into 8-row chunks of 1024 bytes, each alone.
    embed = [b for b in plan.buckets if b.pieces[0].name == "model.embed_tokens.weight"]
    assert [b.nbytes for b in embed] == [1024] * 5 and all(len(b.pieces) == 1 for b in embed)
    # Norms (128 bytes) travel packed with others.
    assert any(len(b.pieces) > 1 for b in plan.buckets)


def test_row_parallel_weights_are_column_major_and_cut_along_their_columns() -> None:
    plan = plan_reallocation(GQA, Layout((0,)), Layout((1,)), 1, bucket_bytes=256)
    check_plan(plan)
    names = [p.name for p in GQA.params()]
    assert plan.column_major == {
        n for n in names if n.endswith(("o_proj.weight", "down_proj.weight"))
    }
    # A cut column-major weight goes in blocks of whole columns: each one contiguous there.
    for bucket in plan.buckets:
        for piece in bucket.pieces:
            full = next(p.shape for p in GQA.params() if p.name == piece.name)
            whole_dim = 0 if piece.name in plan.column_major else len(full) - 1
            assert piece.region[whole_dim] == (0, full[whole_dim]), piece


@given(plan_inputs(), st.integers(0, 11))
@settings(max_examples=60, deadline=None)
def test_rank_programs_are_the_plan_seen_from_each_rank(
    inputs: tuple[str, Layout, Layout, int, int], rank: int
) -> None:
    plan = make_plan(inputs)
    program = rank_program(plan, rank)
    assert plan.program(rank) == program and plan.program(rank) is plan.program(rank)
    # Every bucket this rank sends or receives, once, in step order, named by its index.
    mine = [
        (i, plan.buckets[i].src == rank)
        for step in plan.steps
        for i in step
        if rank in (plan.buckets[i].src, plan.buckets[i].dst)
    ]
    assert [(t.tag, t.send) for step in program.steps for t in step] == mine
    for step in program.steps:
        for t in step:
            bucket = plan.buckets[t.tag]
            assert t.peer == (bucket.dst if t.send else bucket.src) and t.nbytes == bucket.nbytes
            held = (plan.src_shards if t.send else plan.dst_shards)[rank]
            for (name, index, column_major), piece in zip(t.parts, bucket.pieces, strict=True):
                assert name == piece.name and column_major == (name in plan.column_major)
                assert [(s.start, s.stop) for s in index] == [
                    (a - h, b - h) for (a, b), (h, _) in zip(piece.region, held[name], strict=True)
                ]
            if len(bucket.pieces) > 1:
                assert t.span is None
            else:
                # A span only where the piece is one block of memory at both ends.
                piece = bucket.pieces[0]
                cm = piece.name in plan.column_major
                peer_held = (plan.dst_shards if t.send else plan.src_shards)[t.peer]
                both = storage_span(piece.region, peer_held[piece.name], cm) is not None
                want = storage_span(piece.region, held[piece.name], cm) if both else None
                assert t.span == want
    # The same transfers split by how they travel, each part in step order.
    everything = [t for step in program.steps for t in step]
    assert list(program.direct) == [t for t in everything if t.span is not None]
    assert [t for step in program.packed for t in step] == [t for t in everything if t.span is None]
    assert all(program.packed)
    copies = [c for c in plan.local if c.rank == rank]
    assert [name for name, _, _ in program.copies] == [c.name for c in copies]


@given(plan_inputs())
@settings(max_examples=60, deadline=None)
def test_both_ends_of_every_pair_post_their_messages_in_the_same_order(
    inputs: tuple[str, Layout, Layout, int, int],
) -> None:
    """The executor posts a rank's direct transfers, then its packed ones (``RankProgram``);
    NCCL matches point-to-point messages between two ranks in the order they are posted,
    so what A sends B and what B receives from A must come in the same order."""
    plan = make_plan(inputs)
    ranks = sorted({*plan.src.ranks, *plan.dst.ranks})
    order = {
        r: [*plan.program(r).direct, *(t for step in plan.program(r).packed for t in step)]
        for r in ranks
    }
    for a, b in itertools.permutations(ranks, 2):
        sent = [t.tag for t in order[a] if t.send and t.peer == b]
        received = [t.tag for t in order[b] if not t.send and t.peer == a]
        assert sent == received, (a, b)


@st.composite
def region_in_base(draw: st.DrawFn) -> tuple[Region, Region, bool]:
    """A region inside a base region of 1-3 dimensions; column-major drawn for 2-D."""
    dims = draw(st.integers(1, 3))
    base, region = [], []
    for _ in range(dims):
        b0, n = draw(st.integers(0, 6)), draw(st.integers(1, 5))
        r0 = draw(st.integers(b0, b0 + n - 1))
        r1 = draw(st.integers(r0 + 1, b0 + n))
        base.append((b0, b0 + n))
        region.append((r0, r1))
    column_major = dims == 2 and draw(st.booleans())
    return tuple(region), tuple(base), column_major


@settings(max_examples=300, deadline=None)
@given(region_in_base())
def test_storage_span_is_where_torch_finds_the_region_in_memory(
    case: tuple[Region, Region, bool],
) -> None:
    import torch

    from rlhf_worker.model.storage import empty_shard, flat_view, wire_view

    region, base, column_major = case
    shape = tuple(b - a for a, b in base)
    tensor = empty_shard(shape, torch.float32, "cpu", column_major)
    flat = flat_view(tensor, column_major)
    assert flat is not None
    flat.copy_(torch.arange(flat.numel(), dtype=torch.float32))
    piece = wire_view(tensor[local_index(region, base)], column_major)
    span = storage_span(region, base, column_major)
    if piece.is_contiguous():
        assert span == (piece.storage_offset(), piece.storage_offset() + piece.numel())
        assert torch.equal(flat[span[0] : span[1]], piece.reshape(-1))
    else:
        assert span is None


def test_a_block_within_is_contained_and_one_block_of_memory() -> None:
    whole = ((0, 4), (0, 6))
    assert block_within(((1, 3), (0, 6)), whole, column_major=False)  # whole rows
    assert not block_within(((0, 4), (0, 3)), whole, column_major=False)  # half of each row
    assert block_within(((0, 4), (3, 6)), whole, column_major=True)  # whole columns
    assert not block_within(((1, 3), (0, 6)), whole, column_major=True)
    assert block_within(whole, whole, column_major=True)
    assert not block_within(((0, 4), (0, 7)), whole, column_major=False)  # not inside


def test_tp2_halves_are_housed_in_their_tp1_wholes() -> None:
    # tp2 -> dp2 on the same ranks: each rank's half of every split weight is one block
    # of the whole (row-parallel weights along their columns, kept column-major).
    plan = plan_reallocation(GQA, Layout((0, 1), tp=2), Layout((0, 1), dp=2), 1)
    split = {p.name for p in GQA.params() if p.tp_dim is not None}
    for rank in (0, 1):
        housed = housing_indices(plan, rank)
        assert set(housed) == split  # replicated weights are already whole: not housed
        for name, index in housed.items():
            src, dst = plan.src_shards[rank][name], plan.dst_shards[rank][name]
            assert index == local_index(src, dst)
        # Nothing in the other direction: the tp1 whole does not fit in a half.
        assert rank_program(plan, rank).views == tuple(
            (name, local_index(region, region))
            for name, region in plan.dst_shards[rank].items()
            if name not in split
        )
    # dp2 -> tp2 is the mirror: every half is a view of the whole the rank holds.
    back = plan_reallocation(GQA, Layout((0, 1), dp=2), Layout((0, 1), tp=2), 1)
    assert housing_indices(back, 1) == {}
    views = dict(rank_program(back, 1).views)
    assert set(views) == set(back.dst_shards[1])
    for name, index in views.items():
        assert index == local_index(back.dst_shards[1][name], back.src_shards[1][name])


def test_only_shards_that_fit_are_housed_or_viewed() -> None:
    # tp4 -> tp2dp2: rank 0 keeps quarter 0 inside its half 0 and rank 3 quarter 3 inside
    # half 1; ranks 1 and 2 hold a quarter outside the half they get.
    plan = plan_reallocation(GQA, Layout((0, 1, 2, 3), tp=4), Layout((0, 1, 2, 3), dp=2, tp=2), 1)
    split = {p.name for p in GQA.params() if p.tp_dim is not None}
    assert [set(housing_indices(plan, r)) == split for r in range(4)] == [True, False, False, True]
    assert [housing_indices(plan, r) == {} for r in range(4)] == [False, True, True, False]
    # A rank outside either layout has nothing housed; a pipeline stage boundary
    # keeps other layers out.
    assert housing_indices(plan, 7) == {}
    staged = plan_reallocation(GQA, Layout((0, 1), pp=2), Layout((0, 1), pp=1, dp=2), 1)
    assert housing_indices(staged, 0) == {}  # whole layers: nothing smaller than its target
    views = {name for name, _ in rank_program(staged, 0).views}
    assert views == set(staged.src_shards[0])  # stage 0's weights, as they are


def test_layouts_that_cannot_shard_the_model_are_rejected() -> None:
    import pytest

    with pytest.raises(ValueError, match="destination layout cannot shard"):
        plan_reallocation(GQA, Layout((0,)), Layout((0, 1, 2), tp=3), 1)


def test_plan_module_imports_without_torch() -> None:
    code = (
        "import sys; sys.modules['torch'] = None\n"
        "import rlhf_worker.realloc.plan as p\n"
        "from rlhf_operator.contract.sharding import Layout, ModelShape\n"
        "m = ModelShape(32, 48, 2, 8, 4, 4, 40)\n"
        "print(p.bytes_moved(p.plan_reallocation(m, Layout((0,)), Layout((1,)), 1)))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    assert int(done.stdout) == sum(p.numel for p in ModelShape(32, 48, 2, 8, 4, 4, 40).params()) * 4
