"""The execution plan: the contract between planner, coordinator and workers.

"What the plan says is what runs": the planner makes it, the coordinator reads
it back from the job's ConfigMap (`Plan.from_json`) and runs each call on its
mesh with its layout (`call_layout`); workers reallocate parameters between the
calls' layouts, each role living at its home (`home_layouts`). The JSON form
(`Plan.to_json`) is documented in `planner/README.md`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from ..api.dataflow import Call
from .sharding import Layout

PLAN_VERSION = 1


@dataclass
class CallPlan:
    """One call: where it runs, how its role is split there, and its estimate."""

    name: str
    role: str
    kind: str  # generate | inference | train
    mesh: list[tuple[int, int]]  # (node, device) pairs in rank order
    dp: int
    tp: int
    pp: int
    micro_batches: int
    seconds: float  # estimated seconds per iteration
    memory_bytes: int  # estimated peak bytes on one device of the mesh during the call
    recompute: bool = False  # training with activation recomputation
    # Training: 1 = fp32 master weights and moments sharded over dp, 2 = gradients too.
    zero_stage: int = 1
    # memory_bytes by term: weights, optimizer (master weights + moments), gradients,
    # activations, logits, kv_cache, communication, and other (what other roles and
    # this role's other copies keep on the device meanwhile).
    memory_breakdown: dict[str, int] = field(default_factory=dict)
    mesh_spec: str = ""  # the mesh in manifest notation (N, N-M, N:A-B)

    def rank(self, p: int, d: int, t: int) -> tuple[int, int]:
        """The (node, device) of pipeline stage p, data-parallel rank d, tensor rank t."""
        return self.mesh[(p * self.dp + d) * self.tp + t]


# Tokens vLLM runs through the model in one step (its max_num_batched_tokens; prefills
# are chunked to it): what bounds its activations, in the plan and in the engine alike.
VLLM_MAX_BATCHED_TOKENS = 8192


def vllm_batched_tokens(max_model_len: int) -> int:
    """vLLM's max_num_batched_tokens for sequences of `max_model_len` (at least one of them)."""
    return max(VLLM_MAX_BATCHED_TOKENS, max_model_len)


# The terms of a vLLM generation call's memory that the engine itself allocates.
ENGINE_TERMS = ("engine_weights", "engine_overhead", "kv_cache", "activations", "logits")


def engine_memory_bytes(call: CallPlan) -> int:
    """Device bytes the plan gives a generation engine (vLLM) during `call`: its weights,
    KV cache, activations, logits and overhead. 0 if the plan has no such terms."""
    if "engine_weights" not in call.memory_breakdown:
        return 0
    return sum(int(call.memory_breakdown.get(term, 0)) for term in ENGINE_TERMS)


@dataclass
class Reallocation:
    """Moving a role's parameters from one call's layout to another's, each iteration."""

    role: str
    from_call: str
    to_call: str
    bytes: int  # summed over destination devices
    seconds: float


@dataclass
class Offload:
    """A frozen role kept in host memory, loaded onto the call's devices before it runs."""

    role: str
    call: str
    bytes: int  # per device
    seconds: float


@dataclass
class Plan:
    job: str
    algorithm: str
    strategy: str  # search | heuristic | colocated | manual, or a baseline's name
    gpu_type: str
    nodes: int
    gpus_per_node: int
    calls: list[CallPlan]
    reallocations: list[Reallocation]
    iteration_seconds: float
    tokens_per_second: float
    pflops: float
    search_seconds: float = 0.0
    baselines: dict[str, float | None] = field(default_factory=dict)
    offloads: list[Offload] = field(default_factory=list)
    tokens_per_iteration: int = 0
    flops_per_iteration: float = 0.0
    version: int = PLAN_VERSION

    def call(self, name: str) -> CallPlan:
        for c in self.calls:
            if c.name == name:
                return c
        raise KeyError(name)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        for c in out["calls"]:
            c["mesh"] = [list(p) for p in c["mesh"]]
        return out

    def to_json(self, indent: int | None = None) -> str:
        return json.dumps(self.to_dict(), indent=indent, sort_keys=False)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Plan:
        version = data.get("version", PLAN_VERSION)
        if version != PLAN_VERSION:
            raise ValueError(f"plan version {version} is not supported (expected {PLAN_VERSION})")
        values = dict(data)
        values["calls"] = [
            CallPlan(**{**c, "mesh": [(int(n), int(g)) for n, g in c["mesh"]]})
            for c in data["calls"]
        ]
        values["reallocations"] = [Reallocation(**r) for r in data.get("reallocations", [])]
        values["offloads"] = [Offload(**o) for o in data.get("offloads", [])]
        values["baselines"] = dict(data.get("baselines", {}))
        return cls(**values)

    @classmethod
    def from_json(cls, text: str) -> Plan:
        return cls.from_dict(json.loads(text))


def call_layout(call: CallPlan, devices_per_node: int) -> Layout:
    """A call's layout in global ranks (rank = node * devices_per_node + device)."""
    ranks = tuple(node * devices_per_node + device for node, device in call.mesh)
    return Layout(ranks=ranks, pp=call.pp, dp=call.dp, tp=call.tp)


def home_layouts(plan: Plan, calls: Sequence[Call]) -> dict[str, Layout]:
    """Where each role's parameters live between calls: its train call's layout, else its first call's."""
    homes: dict[str, Layout] = {}
    for call in calls:
        if call.kind == "train":
            homes[call.role] = call_layout(plan.call(call.name), plan.gpus_per_node)
    for call in calls:
        homes.setdefault(call.role, call_layout(plan.call(call.name), plan.gpus_per_node))
    return homes
