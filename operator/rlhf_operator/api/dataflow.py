"""Each algorithm's model function calls and their data dependencies.

One iteration of an RLHF algorithm is a small DAG of calls, each run by one
role: generate, inference or train. Edges come from matching one call's
outputs to another's inputs (as in ReaL's dataflow graph). This table is the
single source of truth for the planner (which calls to place and estimate),
the coordinator (what to run and in which order) and the validator (which
call names a manual placement may name).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

CallKind = Literal["generate", "inference", "train"]

# Data keys with one value per sample (not per token): small, so every rank of a
# consumer gets all of them (group statistics and reward normalisation need the
# whole batch). The coordinator's schedule and the workers' data moves both obey it.
SEQUENCE_KEYS = frozenset({"rewards", "costs", "greedy_rewards"})


@dataclass(frozen=True)
class Call:
    name: str
    role: str
    kind: CallKind
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    greedy: bool = False  # generation without sampling (ReMax's baseline)


def _ppo_like(with_cost: bool) -> tuple[Call, ...]:
    scores = ("rewards", "costs") if with_cost else ("rewards",)
    calls = [
        Call("actor_gen", "actor", "generate", ("prompts",), ("responses", "gen_logprobs")),
        Call("ref_inf", "ref", "inference", ("responses",), ("ref_logprobs",)),
        Call("reward_inf", "reward", "inference", ("responses",), ("rewards",)),
    ]
    if with_cost:
        calls.append(Call("cost_inf", "cost", "inference", ("responses",), ("costs",)))
    calls += [
        Call("critic_inf", "critic", "inference", ("responses",), ("values",)),
        Call(
            "actor_train",
            "actor",
            "train",
            ("responses", "gen_logprobs", "ref_logprobs", *scores, "values"),
            (),
        ),
        Call(
            "critic_train",
            "critic",
            "train",
            ("responses", "gen_logprobs", "ref_logprobs", *scores, "values"),
            (),
        ),
    ]
    return tuple(calls)


def _group_based() -> tuple[Call, ...]:
    return (
        Call("actor_gen", "actor", "generate", ("prompts",), ("responses", "gen_logprobs")),
        Call("ref_inf", "ref", "inference", ("responses",), ("ref_logprobs",)),
        Call("reward_inf", "reward", "inference", ("responses",), ("rewards",)),
        Call(
            "actor_train",
            "actor",
            "train",
            ("responses", "gen_logprobs", "ref_logprobs", "rewards"),
            (),
        ),
    )


def _remax() -> tuple[Call, ...]:
    return (
        Call("actor_gen", "actor", "generate", ("prompts",), ("responses", "gen_logprobs")),
        Call(
            "actor_greedy_gen",
            "actor",
            "generate",
            ("prompts",),
            ("greedy_responses",),
            greedy=True,
        ),
        Call("ref_inf", "ref", "inference", ("responses",), ("ref_logprobs",)),
        Call("reward_inf", "reward", "inference", ("responses",), ("rewards",)),
        Call(
            "reward_greedy_inf", "reward", "inference", ("greedy_responses",), ("greedy_rewards",)
        ),
        Call(
            "actor_train",
            "actor",
            "train",
            ("responses", "gen_logprobs", "ref_logprobs", "rewards", "greedy_rewards"),
            (),
        ),
    )


_CALLS: dict[str, tuple[Call, ...]] = {
    "ppo": _ppo_like(with_cost=False),
    "safe-rlhf": _ppo_like(with_cost=True),
    "grpo": _group_based(),
    "rloo": _group_based(),
    "remax": _remax(),
}

# Roles each algorithm needs, and those it trains. `ref` is needed only while
# the KL coefficient is positive (see api.checks).
REQUIRED_ROLES: dict[str, tuple[str, ...]] = {
    "ppo": ("actor", "critic", "ref", "reward"),
    "safe-rlhf": ("actor", "critic", "ref", "reward", "cost"),
    "grpo": ("actor", "ref", "reward"),
    "rloo": ("actor", "ref", "reward"),
    "remax": ("actor", "ref", "reward"),
}
TRAINED_ROLES: dict[str, tuple[str, ...]] = {
    "ppo": ("actor", "critic"),
    "safe-rlhf": ("actor", "critic"),
    "grpo": ("actor",),
    "rloo": ("actor",),
    "remax": ("actor",),
}


def calls_for(algorithm: str, roles: set[str] | None = None) -> tuple[Call, ...]:
    """The calls of one iteration of `algorithm`.

    `roles` (the roles the job has) drops the calls of absent optional roles:
    without `ref` (KL disabled) there is no ref_inf, and consumers simply do
    not receive ref_logprobs. A reward *function* is still a reward_inf call:
    it runs on the reward call's ranks, on CPU, over decoded text.
    """
    calls = _CALLS[algorithm]
    if roles is None:
        return calls
    kept = tuple(c for c in calls if c.role in roles)
    dropped = {o for c in calls if c.role not in roles for o in c.outputs}
    return tuple(
        Call(
            c.name,
            c.role,
            c.kind,
            tuple(i for i in c.inputs if i not in dropped),
            c.outputs,
            c.greedy,
        )
        for c in kept
    )


def dependencies(calls: tuple[Call, ...]) -> dict[str, tuple[str, ...]]:
    """For each call, the calls whose outputs it consumes (within one iteration)."""
    producer = {out: c.name for c in calls for out in c.outputs}
    return {c.name: tuple(sorted({producer[i] for i in c.inputs if i in producer})) for c in calls}
