"""The iteration schedule: reallocations, data moves and calls in a safe order."""

from __future__ import annotations

from rlhf_operator.api.dataflow import calls_for
from rlhf_operator.contract import plan as planned
from rlhf_operator.contract.plan import CallPlan, Plan, call_layout, home_layouts
from rlhf_operator.contract.sharding import Layout
from rlhf_operator.coordinator.schedule import (
    EndIteration,
    MoveData,
    Offload,
    Realloc,
    Release,
    Restore,
    RunCall,
    Step,
    iteration_steps,
)


def _call(
    name: str,
    role: str,
    kind: str,
    mesh: list[tuple[int, int]],
    dp: int = 1,
    tp: int = 1,
    pp: int = 1,
) -> CallPlan:
    return CallPlan(
        name=name,
        role=role,
        kind=kind,
        mesh=mesh,
        dp=dp,
        tp=tp,
        pp=pp,
        micro_batches=1,
        seconds=1.0,
        memory_bytes=0,
    )


def _plan(calls: list[CallPlan], algorithm: str = "ppo", per_node: int = 4) -> Plan:
    return Plan(
        job="j",
        algorithm=algorithm,
        strategy="manual",
        gpu_type="cpu",
        nodes=1,
        gpus_per_node=per_node,
        calls=calls,
        reallocations=[],
        iteration_seconds=1.0,
        tokens_per_second=1.0,
        pflops=0.0,
    )


ALL = [(0, 0), (0, 1), (0, 2), (0, 3)]


def _ppo_split() -> Plan:
    return _plan(
        [
            _call("actor_gen", "actor", "generate", ALL, dp=4),
            _call("ref_inf", "ref", "inference", [(0, 2), (0, 3)], dp=2),
            _call("reward_inf", "reward", "inference", [(0, 0)]),
            _call("critic_inf", "critic", "inference", [(0, 2), (0, 3)], tp=2),
            _call("actor_train", "actor", "train", ALL, dp=2, tp=2),
            _call("critic_train", "critic", "train", [(0, 2), (0, 3)], dp=2),
        ]
    )


def _by_kind(steps: list[Step]) -> dict[type, list[Step]]:
    out: dict[type, list[Step]] = {}
    for s in steps:
        out.setdefault(type(s.action), []).append(s)
    return out


def test_layout_of_a_call_uses_global_ranks_in_mesh_order() -> None:
    call = _call("x", "actor", "train", [(1, 0), (1, 1)], tp=2)
    assert call_layout(call, devices_per_node=4) == Layout(ranks=(4, 5), tp=2)


def test_home_is_the_train_layout_for_trained_roles_else_the_first_call() -> None:
    homes = home_layouts(_ppo_split(), calls_for("ppo"))
    assert homes["actor"] == Layout(ranks=(0, 1, 2, 3), dp=2, tp=2)
    assert homes["critic"] == Layout(ranks=(2, 3), dp=2)
    assert homes["ref"] == Layout(ranks=(2, 3), dp=2)


def test_ppo_split_plan_steps() -> None:
    steps = iteration_steps(_ppo_split(), calls_for("ppo"))
    kinds = _by_kind(steps)
    reallocs = [s.action for s in kinds[Realloc]]
    # Actor: train layout -> generation layout; critic: train layout -> inference layout.
    assert {(r.role, r.for_call) for r in reallocs} == {
        ("actor", "actor_gen"),
        ("critic", "critic_inf"),
    }  # type: ignore[union-attr]
    assert {s.action.role for s in kinds[Release]} == {"actor", "critic"}  # type: ignore[union-attr]
    # Every step comes after its prerequisites, and the iteration ends last, for everyone.
    for s in steps:
        assert all(a < s.index for a in s.after)
    assert isinstance(steps[-1].action, EndIteration)
    assert steps[-1].ranks == (0, 1, 2, 3)
    assert set(steps[-1].after) == set(range(len(steps) - 1))


def test_transient_copy_is_released_before_training_runs_on_its_ranks() -> None:
    steps = iteration_steps(_ppo_split(), calls_for("ppo"))
    index = {
        (type(s.action).__name__, getattr(s.action, "call", getattr(s.action, "role", ""))): s.index
        for s in steps
    }
    assert index[("Release", "actor")] < index[("RunCall", "actor_train")]
    assert (
        index[("Realloc", "actor")] < index[("RunCall", "actor_gen")] < index[("Release", "actor")]
    )


def test_data_moves_between_layouts_and_sequence_keys_always_move() -> None:
    steps = iteration_steps(_ppo_split(), calls_for("ppo"))
    moves = {
        (s.action.key, s.action.src_call, s.action.dst_call)
        for s in steps
        if isinstance(s.action, MoveData)
    }
    assert ("responses", "actor_gen", "ref_inf") in moves
    assert ("rewards", "reward_inf", "actor_train") in moves
    assert ("values", "critic_inf", "critic_train") in moves
    # critic_train and critic_inf differ in layout, but the critic's values come from critic_inf
    assert not any(k == "prompts" for k, _, _ in moves)
    for s in steps:
        if isinstance(s.action, RunCall) and s.action.call == "actor_train":
            producers = {
                steps[a].action.call for a in s.after if isinstance(steps[a].action, RunCall)
            }  # type: ignore[union-attr]
            assert producers >= {"actor_gen", "ref_inf", "reward_inf", "critic_inf"}


def test_colocated_plan_needs_no_reallocation() -> None:
    plan = _plan([_call(c.name, c.role, c.kind, ALL, dp=4) for c in calls_for("grpo")], "grpo")
    steps = iteration_steps(plan, calls_for("grpo"))
    kinds = _by_kind(steps)
    assert Realloc not in kinds and Release not in kinds
    # With equal layouts, only what the train call needs whole (and rewards) moves.
    moves = {(s.action.key, s.action.dst_call) for s in kinds[MoveData]}  # type: ignore[union-attr]
    assert moves == {
        ("rewards", "actor_train"),
        ("responses", "actor_train"),
        ("gen_logprobs", "actor_train"),
        ("ref_logprobs", "actor_train"),
    }


def test_remax_shares_one_transient_copy_between_its_two_generations() -> None:
    gen = dict(mesh=ALL, dp=4)
    plan = _plan(
        [
            _call("actor_gen", "actor", "generate", **gen),  # type: ignore[arg-type]
            _call("actor_greedy_gen", "actor", "generate", **gen),  # type: ignore[arg-type]
            _call("ref_inf", "ref", "inference", ALL, dp=4),
            _call("reward_inf", "reward", "inference", ALL, dp=4),
            _call("reward_greedy_inf", "reward", "inference", ALL, dp=4),
            _call("actor_train", "actor", "train", ALL, tp=4),
        ],
        "remax",
    )
    steps = iteration_steps(plan, calls_for("remax"))
    kinds = _by_kind(steps)
    assert len(kinds[Realloc]) == 1 and len(kinds[Release]) == 1
    release = kinds[Release][0]
    gens = {
        s.index for s in steps if isinstance(s.action, RunCall) and s.action.call.endswith("gen")
    }
    assert gens <= set(release.after)


def _prerequisites(steps: list[Step], index: int) -> set[int]:
    """Every step that must finish before step `index` (transitively)."""
    seen: set[int] = set()
    todo = list(steps[index].after)
    while todo:
        i = todo.pop()
        if i not in seen:
            seen.add(i)
            todo.extend(steps[i].after)
    return seen


def test_offloaded_roles_come_back_before_their_first_use_and_leave_after_their_last() -> None:
    plan = _plan(
        [
            _call("actor_gen", "actor", "generate", ALL, dp=4),
            _call("actor_greedy_gen", "actor", "generate", ALL, dp=4),
            _call("ref_inf", "ref", "inference", ALL, dp=4),
            _call("reward_inf", "reward", "inference", ALL, dp=4),  # the reward's home
            _call("reward_greedy_inf", "reward", "inference", [(0, 0)]),  # a transient copy
            _call("actor_train", "actor", "train", ALL, tp=4),
        ],
        "remax",
    )
    plan.offloads = [
        planned.Offload("ref", "ref_inf", 1, 0.1),
        planned.Offload("reward", "reward_inf", 1, 0.1),
        planned.Offload("reward", "reward_greedy_inf", 1, 0.1),
    ]
    steps = iteration_steps(plan, calls_for("remax"))
    kinds = _by_kind(steps)
    restores = {s.action.role: s for s in kinds[Restore]}  # type: ignore[union-attr]
    offloads = {s.action.role: s for s in kinds[Offload]}  # type: ignore[union-attr]
    # Once per iteration per offloaded role, on its home ranks; trained roles never.
    assert len(kinds[Restore]) == len(kinds[Offload]) == 2
    assert set(restores) == set(offloads) == {"ref", "reward"}
    assert restores["reward"].ranks == offloads["reward"].ranks == (0, 1, 2, 3)
    uses = [
        s
        for s in steps
        if isinstance(s.action, RunCall | Realloc | Release) and s.action.role == "reward"
    ]
    assert {type(s.action) for s in uses} == {RunCall, Realloc, Release}
    for step in uses:
        # Every use of the home copy waits for the restore...
        if isinstance(step.action, Realloc) or step.action == RunCall(
            "reward_inf", "reward", Layout(ranks=(0, 1, 2, 3), dp=4)
        ):
            assert restores["reward"].index in _prerequisites(steps, step.index)
        # ...and the offload waits for every use, the transient copy's release included
        # (a transient copy may share the home copy's tensors).
        assert step.index in _prerequisites(steps, offloads["reward"].index)


def test_no_offload_steps_without_offloads_in_the_plan() -> None:
    kinds = _by_kind(iteration_steps(_ppo_split(), calls_for("ppo")))
    assert Restore not in kinds and Offload not in kinds
