"""`plan_job`: from an RLHFJob to a Plan, honouring `spec.placement.strategy`."""

from __future__ import annotations

import math
import time

from ..api.checks import mesh_devices
from ..api.dataflow import Call
from ..api.job import RLHFJob
from ..contract.plan import CallPlan, Offload, Plan, Reallocation
from .baselines import BASELINES
from .cluster import Cluster, Mesh
from .estimator import CallCost, Strategy, strategy_problem
from .profiles import load_profile
from .search import Candidates, search
from .simulate import Assignment, Evaluation, Evaluator
from .workload import Workload, workload_for

GiB = 1024**3


class PlanError(ValueError):
    """The job cannot be planned (a bad manual placement, an unknown profile)."""


class InfeasibleError(PlanError):
    """No plan fits in device memory; the message says what would be needed."""


def cluster_for(
    job: RLHFJob,
    gpus: int | None = None,
    gpus_per_node: int | None = None,
    gpu_type: str | None = None,
) -> Cluster:
    """The job's devices: its resources, or the overrides (`rlhfctl plan --gpus ...`)."""
    res = job.spec.resources
    if res.local is not None and gpus is None:
        return Cluster(1, res.local.slots, load_profile(gpu_type or "cpu"))
    total = gpus if gpus is not None else (res.gpus or 1)
    per_node = gpus_per_node if gpus_per_node is not None else res.gpus_per_node
    per_node = min(per_node, total)
    if total % per_node:
        raise PlanError(f"{total} GPUs do not fill nodes of {per_node}")
    return Cluster(total // per_node, per_node, load_profile(gpu_type or res.gpu_type))


def _to_plan(
    w: Workload,
    cluster: Cluster,
    strategy: str,
    assign: Assignment,
    ev: Evaluation,
    search_seconds: float = 0.0,
    baselines: dict[str, float | None] | None = None,
) -> Plan:
    calls = []
    for c in w.calls:
        mesh, lay = assign[c.name]
        cost = ev.costs[c.name]
        calls.append(
            CallPlan(
                name=c.name,
                role=c.role,
                kind=c.kind,
                mesh=cluster.pairs(mesh),
                dp=lay.dp,
                tp=lay.tp,
                pp=lay.pp,
                micro_batches=lay.micro_batches,
                seconds=cost.seconds,
                memory_bytes=round(ev.memory[c.name]),
                recompute=lay.recompute,
                zero_stage=lay.zero_stage,
                memory_breakdown=memory_breakdown(c, cost, ev.memory[c.name]),
                mesh_spec=cluster.to_string(mesh),
            )
        )
    seconds = ev.iteration_seconds
    flops = w.flops()
    return Plan(
        job=w.name,
        algorithm=w.algorithm,
        strategy=strategy,
        gpu_type=cluster.profile.name,
        nodes=cluster.nodes,
        gpus_per_node=cluster.per_node,
        calls=calls,
        reallocations=[
            Reallocation(role, a, b, t.total_bytes, t.seconds) for role, a, b, t in ev.reallocations
        ],
        offloads=[Offload(role, call, round(b), s) for role, call, b, s in ev.offloads],
        iteration_seconds=seconds,
        tokens_per_second=w.tokens / seconds if seconds > 0 else 0.0,
        pflops=flops / seconds / 1e15 if seconds > 0 else 0.0,
        search_seconds=search_seconds,
        baselines=baselines or {},
        tokens_per_iteration=w.tokens,
        flops_per_iteration=flops,
    )


def memory_breakdown(call: Call, cost: CallCost, peak: float) -> dict[str, int]:
    """A call's planned peak by term: its own buffers, the rest as `other`."""
    own = {"weights": cost.weight_bytes, **cost.breakdown}
    if call.kind == "train":
        own["optimizer"] = cost.state_bytes
    own["other"] = max(peak - sum(own.values()), 0.0)
    return {term: round(v) for term, v in own.items()}


def manual_assignment(job: RLHFJob, w: Workload, cluster: Cluster) -> Assignment:
    """The manual `placement.calls` as an assignment; PlanError names what is wrong."""
    assign: Assignment = {}
    calls = job.spec.placement.calls
    for c in w.calls:
        if c.name not in calls:
            raise PlanError(f"spec.placement.calls: no placement for call {c.name}")
        cp = calls[c.name]
        devices = mesh_devices(cp.mesh, cluster.nodes, cluster.per_node)
        if isinstance(devices, str):
            raise PlanError(f"spec.placement.calls.{c.name}.mesh: {cp.mesh!r}: {devices}")
        mesh = cluster.from_pairs(devices)
        if mesh is None:
            raise PlanError(f"spec.placement.calls.{c.name}.mesh: {cp.mesh!r} is not a mesh")
        lay = Strategy(cp.dp, cp.tp, cp.pp, cp.micro_batches, cp.recompute, cp.zero_stage)
        problem = strategy_problem(w, c, cluster, mesh, lay)
        if problem:
            raise PlanError(f"spec.placement.calls.{c.name}: {problem}")
        assign[c.name] = (mesh, lay)
    return assign


def requirement(w: Workload, cluster: Cluster) -> str:
    """What a job would need to fit, in words."""
    usable = cluster.profile.usable_memory
    need = 0.0
    for role in w.roles.values():
        if role.trainable:
            # Weights, fp32 gradients, fp32 master weights and moments, over all devices.
            need += role.params * (role.dtype_bytes + 16)
    devices = max(1, math.ceil(need / usable))
    total = cluster.devices
    what = "CPU slots" if cluster.profile.kind == "cpu" else f"{cluster.profile.name} GPUs"
    hint = (
        f"the trained models' weights, gradients and optimizer states alone take "
        f"{need / GiB:.0f} GiB, at least {devices} {what} of {usable / GiB:.0f} GiB usable"
    )
    if devices <= total:
        hint += (
            f"; with {total} the activations and KV cache of {w.samples} sequences of "
            f"{w.seq_len} tokens do not fit: use more or larger devices, more minibatches, "
            "or shorter sequences"
        )
    else:
        hint += f" (the job has {total}): use more devices or devices with more memory"
    return hint


def plan_job(
    job: RLHFJob,
    *,
    gpus: int | None = None,
    gpus_per_node: int | None = None,
    gpu_type: str | None = None,
    strategy: str | None = None,
    search_seconds: float | None = None,
    max_steps: int | None = None,
    seed: int | None = None,
) -> Plan:
    """Plan a job: its strategy's plan, with every baseline's estimate alongside.

    Raises InfeasibleError when nothing fits in memory, PlanError for a bad
    manual placement or an unknown device profile.
    """
    t0 = time.monotonic()
    try:
        cluster = cluster_for(job, gpus, gpus_per_node, gpu_type)
    except ValueError as exc:
        raise PlanError(str(exc)) from None
    w = workload_for(job)
    ev = Evaluator(w, cluster)
    strategy = strategy or job.spec.placement.strategy
    budget = search_seconds if search_seconds is not None else job.spec.placement.search_seconds
    seed = job.spec.training.seed if seed is None else seed

    found: dict[str, tuple[Assignment, Evaluation]] = {}
    for name, make in BASELINES.items():
        assign = make(ev)
        got = ev.evaluate(assign) if assign is not None else None
        if assign is not None and got is not None:
            found[name] = (assign, got)
    baselines: dict[str, float | None] = {
        name: (found[name][1].iteration_seconds if name in found else None) for name in BASELINES
    }

    if strategy == "manual":
        assign = manual_assignment(job, w, cluster)
        got = ev.evaluate(assign)
        if got is None:
            raise InfeasibleError(
                f"the manual placement does not fit in memory: {requirement(w, cluster)}"
            )
        return _to_plan(w, cluster, strategy, assign, got, time.monotonic() - t0, baselines)
    if strategy in ("colocated", "heuristic"):
        if strategy not in found:
            raise InfeasibleError(
                f"does not fit in memory with strategy {strategy}: {requirement(w, cluster)}"
            )
        assign, got = found[strategy]
        return _to_plan(w, cluster, strategy, assign, got, time.monotonic() - t0, baselines)

    cands = Candidates(ev)
    # Walks start from every baseline that fits and from each call at its fastest placement.
    starts = [found[name][0] for name in found]
    starts += [a for a in (_fastest_everywhere(ev, cands), _any_feasible(ev, cands)) if a]
    if not starts:
        raise InfeasibleError(f"does not fit in memory on any plan: {requirement(w, cluster)}")
    steps = max_steps if max_steps is not None else default_steps(w, cluster)
    left = max(0.5, budget - (time.monotonic() - t0))
    result = search(ev, cands, starts, seed=seed, max_steps=steps, time_budget=left)
    return _to_plan(
        w, cluster, "search", result.assignment, result.evaluation,
        time.monotonic() - t0, baselines,
    )  # fmt: skip


def default_steps(w: Workload, cluster: Cluster) -> int:
    """Steps of all walks together: fixed, so that a seed gives one plan (a few seconds on one
    core; the walks stop earlier when they no longer improve)."""
    return 24000


def _fastest_everywhere(ev: Evaluator, cands: Candidates) -> Assignment | None:
    """Each call at its fastest fitting placement on any mesh (the first mesh of the class),
    when that plan fits."""
    assign: Assignment = {}
    for c in ev.calls:
        best: tuple[float, Mesh, Strategy] | None = None
        for key in cands.mesh_classes[c.name]:
            mesh = cands.classes[key][0]
            lay = cands.layouts[(c.name, key)][0]
            secs = ev.cost(c, mesh, lay).seconds
            if best is None or secs < best[0]:
                best = (secs, mesh, lay)
        if best is None:
            return None
        assign[c.name] = (best[1], best[2])
    return assign if ev.evaluate(assign) is not None else None


def _any_feasible(ev: Evaluator, cands: Candidates) -> Assignment | None:
    """A last resort: each call on its own fastest fitting placement of the whole cluster."""
    full = ev.c.full()
    assign: Assignment = {}
    for c in ev.calls:
        lays = cands.best_on(c, full)
        if not lays:
            return None
        assign[c.name] = (full, lays[0])
    return assign if ev.evaluate(assign) is not None else None


__all__ = ["Cluster", "InfeasibleError", "Mesh", "PlanError", "cluster_for", "plan_job"]
