"""One reconciliation of one RLHFJob: compare what should exist with what does
and make one step towards it. Level-based: it looks only at the job (body),
its pods (from kopf's index) and the nodes (idem), never at what happened
before, so running it twice, or after an operator restart, changes nothing.

The order of checks is the job's lifecycle: finished -> valid -> suspended ->
planned (enough GPUs) -> deadline -> pods (failed: once the failures settle,
restart the gang or fail past backoffLimit; coordinator succeeded: done; all
running: Running).
"""

from __future__ import annotations

import datetime
import logging
import time
from collections.abc import Callable, MutableMapping
from dataclasses import dataclass
from typing import Any

from ..api import validate_object
from ..api.manifests import one_line
from ..controlplane.tokens import new_token
from ..planner import PlanError, plan_job
from . import metrics, names
from .builders import (
    JobRef,
    Topology,
    build_config_map,
    build_coordinator_pod,
    build_coordinator_rbac,
    build_pod_group,
    build_secret,
    build_service,
    build_worker_pods,
    job_manifest_yaml,
    topology_for,
)
from .config import OperatorConfig
from .inventory import NodeGPUs, capacity
from .kube import Kube
from .pods import PodView, describe_failures, failures_settled, gone, is_disruption
from .status import TERMINAL, StatusUpdate, is_true, iso, parse_time, plan_summary

log = logging.getLogger(__name__)

Emit = Callable[[str, str, str], None]  # (type Normal|Warning, reason, message)


@dataclass(frozen=True)
class Result:
    """`wait` set: the job waits for something outside (GPUs, pods going away);
    retry after `delay` seconds (change handlers raise kopf.TemporaryError)."""

    outcome: str  # done | wait
    message: str = ""
    delay: float = 0.0


DONE = Result("done")


def _job_object(body: dict[str, Any]) -> dict[str, Any]:
    """What `rlhfctl validate` would see: the manifest without status."""
    return {k: v for k, v in body.items() if k in ("apiVersion", "kind", "metadata", "spec")}


def _delete_pods(kube: Kube, namespace: str, pods: list[PodView]) -> int:
    count = 0
    for p in pods:
        if not p.deleting and kube.delete("Pod", namespace, p.name):
            count += 1
    return count


def reconcile(
    body: dict[str, Any],
    pods: list[PodView],
    nodes: list[NodeGPUs],
    kube: Kube,
    config: OperatorConfig,
    memo: MutableMapping[str, Any],
    emit: Emit,
    now: datetime.datetime,
) -> Result:
    meta = body.get("metadata") or {}
    ref = JobRef(str(meta.get("name")), str(meta.get("namespace")), str(meta.get("uid")))
    update = StatusUpdate(body.get("status"), int(meta.get("generation") or 1), now)
    try:
        result = _reconcile(body, ref, update, pods, nodes, kube, config, memo, emit, now)
    finally:
        patch = update.patch()
        if patch is not None and not memo.get("deleted"):
            kube.patch_job_status(ref.namespace, ref.name, patch)
        metrics.record_phase(ref.uid, update.phase)
    return result


def _reconcile(
    body: dict[str, Any],
    ref: JobRef,
    update: StatusUpdate,
    pods: list[PodView],
    nodes: list[NodeGPUs],
    kube: Kube,
    config: OperatorConfig,
    memo: MutableMapping[str, Any],
    emit: Emit,
    now: datetime.datetime,
) -> Result:
    status = update.after

    if update.phase in TERMINAL:
        return _finished(body, ref, update, pods, kube, memo, now)

    job, errors = validate_object(_job_object(body))
    if job is None or errors:
        message = one_line("; ".join(str(e) for e in errors))
        update.set_condition("Valid", "False", "InvalidSpec", message)
        _fail(update, "InvalidSpec", message, emit)
        return DONE
    update.set_condition("Valid", "True", "Validated", "the spec is valid")

    if job.spec.suspend:
        return _suspend(ref, update, pods, kube, emit)
    if is_true(status, "Suspended"):
        update.set_condition("Suspended", "False", "Resumed", "the job was resumed")
        update.set("startTime", None)  # the deadline counts from the resume
        emit("Normal", "Resumed", "pods are created again; the job resumes from its checkpoint")

    if not is_true(status, "Planned"):
        result = _plan(body, ref, job, update, nodes, kube, emit)
        if result is not None:
            return result

    deadline = job.spec.run_policy.active_deadline_seconds
    started = parse_time(status.get("startTime"))
    if deadline and started and (now - started).total_seconds() > deadline:
        _delete_pods(kube, ref.namespace, pods)
        message = f"the job ran longer than activeDeadlineSeconds ({deadline} s)"
        _fail(update, "DeadlineExceeded", message, emit)
        return DONE

    # The planner's cluster is the spec's (planner.cluster_for): nodes x per node.
    topology = topology_for(job)
    return _run(ref, job, update, topology, pods, kube, config, memo, emit, now)


def _fail(update: StatusUpdate, reason: str, message: str, emit: Emit) -> None:
    update.set_condition("Failed", "True", reason, message)
    update.set_condition("Running", "False", reason, message)
    if update.phase != "Failed":
        metrics.FINISHED.labels(result="Failed").inc()
        emit("Warning", reason, message)
    update.set_phase("Failed")


def _finished(
    body: dict[str, Any],
    ref: JobRef,
    update: StatusUpdate,
    pods: list[PodView],
    kube: Kube,
    memo: MutableMapping[str, Any],
    now: datetime.datetime,
) -> Result:
    """A finished job keeps no running pods; after ttlSecondsAfterFinished it is deleted."""
    _delete_pods(kube, ref.namespace, [p for p in pods if p.phase not in TERMINAL])
    spec = body.get("spec") or {}
    ttl = (spec.get("runPolicy") or {}).get("ttlSecondsAfterFinished")
    done = parse_time(update.after.get("completionTime"))
    if ttl is None or done is None:
        return DONE
    left = (done - now).total_seconds() + float(ttl)
    if left > 0:
        return Result("wait", f"deleted {left:.0f} s after finishing", left)
    kube.delete_job(ref.namespace, ref.name)
    memo["deleted"] = True
    return DONE


def _suspend(
    ref: JobRef, update: StatusUpdate, pods: list[PodView], kube: Kube, emit: Emit
) -> Result:
    """Pods go; the ConfigMap, Secret, Service and checkpoints stay for the resume."""
    _delete_pods(kube, ref.namespace, pods)
    message = "spec.suspend is true: pods removed, checkpoints kept"
    if update.set_condition("Suspended", "True", "Suspended", message):
        emit("Normal", "Suspended", message)
    update.set_condition("PodsReady", "False", "Suspended", message)
    update.set_condition("Running", "False", "Suspended", message)
    update.set_phase("Suspended")
    return DONE


def _plan(
    body: dict[str, Any],
    ref: JobRef,
    job: Any,
    update: StatusUpdate,
    nodes: list[NodeGPUs],
    kube: Kube,
    emit: Emit,
) -> Result | None:
    """Check the GPUs, plan, store the plan; None when planned."""
    if job.spec.resources.local is None:
        cap = capacity(job, nodes)
        if not cap.enough:
            message = cap.message()
            if update.set_condition("Planned", "False", "InsufficientGPUs", message):
                emit("Warning", "InsufficientGPUs", message)
            update.set_phase("Pending")
            return Result("wait", message, -1.0)
    t0 = time.monotonic()
    try:
        plan = plan_job(job)
    except PlanError as exc:
        message = one_line(str(exc))
        update.set_condition("Planned", "False", "PlanFailed", message)
        _fail(update, "PlanFailed", message, emit)
        return DONE
    finally:
        metrics.PLANNING_SECONDS.observe(time.monotonic() - t0)
    config_map = build_config_map(ref, job_manifest_yaml(body), plan.to_json())
    kube.create(config_map)
    summary = plan_summary(plan, config_map["metadata"]["name"])
    update.set("plan", summary)
    update.set("gpus", plan.nodes * plan.gpus_per_node)
    message = (
        f"{plan.strategy} plan on {plan.nodes} x {plan.gpus_per_node} devices, "
        f"{plan.iteration_seconds:.3g} s per iteration estimated"
    )
    update.set_condition("Planned", "True", "Planned", message)
    emit("Normal", "Planned", message)
    return None


def _run(
    ref: JobRef,
    job: Any,
    update: StatusUpdate,
    topology: Topology,
    pods: list[PodView],
    kube: Kube,
    config: OperatorConfig,
    memo: MutableMapping[str, Any],
    emit: Emit,
    now: datetime.datetime,
) -> Result:
    status = update.after
    attempt = int(status.get("restarts") or 0)
    current = [p for p in pods if p.attempt == attempt and not p.deleting]
    stale = [p for p in pods if p.attempt != attempt or p.deleting]

    coordinator = next((p for p in current if p.component == names.COORDINATOR), None)
    if coordinator is not None and coordinator.phase == "Succeeded":
        _delete_pods(kube, ref.namespace, [p for p in pods if p.phase not in TERMINAL])
        message = "the coordinator finished the training"
        update.set_condition("Succeeded", "True", "Completed", message)
        update.set_condition("Running", "False", "Completed", message)
        if update.phase != "Succeeded":
            metrics.FINISHED.labels(result="Succeeded").inc()
            emit("Normal", "Succeeded", message)
        update.set_phase("Succeeded")
        return DONE

    expected = topology.world_size + 1
    failed = [p for p in current if p.phase == "Failed"]
    # A pod of this attempt that vanished or is being deleted after all were
    # running failed too (deleted by hand, evicted, preempted): the gang cannot go
    # on without it. One still terminating says why (its DisruptionTarget).
    if not failed and is_true(status, "PodsReady") and len(current) < expected:
        present = {p.name for p in current}
        leaving = {p.name: p for p in pods if p.attempt == attempt and p.deleting}
        wanted = [names.coordinator_name(ref.name)] + [
            names.worker_name(ref.name, r) for r in range(topology.world_size)
        ]
        failed = [gone(n, attempt, leaving.get(n)) for n in wanted if n not in present]
    if failed:
        if not failures_settled(current, failed, config.failure_settle_seconds, now):
            return Result(
                "wait", f"{len(failed)} pod(s) failed: waiting for the others to end", 1.0
            )
        return _restart(ref, job, update, attempt, failed, pods, kube, memo, emit)

    if stale:
        # An earlier attempt's pods must be gone before their names are reused.
        _delete_pods(kube, ref.namespace, stale)
        return Result("wait", f"waiting for {len(stale)} pod(s) of an earlier attempt to go", 1.0)

    if len(current) < expected:
        _create_children(ref, job, topology, config, attempt, current, kube)
        if not status.get("startTime"):
            update.set("startTime", iso(now))
        update.set_phase("Starting" if attempt == 0 else "Restarting")
        update.set_condition(
            "PodsReady", "False", "Creating", f"creating {expected} pods (attempt {attempt})"
        )
        return DONE

    running = [p for p in current if p.phase == "Running"]
    if len(running) == expected:
        message = f"{expected} pods running"
        if update.set_condition("PodsReady", "True", "AllPodsRunning", message):
            emit("Normal", "Running", message)
            created = memo.get("created_at")
            if created is not None and attempt == 0:
                metrics.TIME_TO_RUNNING.observe(max(0.0, (now - created).total_seconds()))
        update.set_condition("Running", "True", "Running", "the coordinator is training")
        update.set_phase("Running")
    else:
        waiting = expected - len(running)
        update.set_condition(
            "PodsReady", "False", "Waiting", f"{waiting} of {expected} pods not running yet"
        )
    return DONE


def _restart(
    ref: JobRef,
    job: Any,
    update: StatusUpdate,
    attempt: int,
    failed: list[PodView],
    pods: list[PodView],
    kube: Kube,
    memo: MutableMapping[str, Any],
    emit: Emit,
) -> Result:
    """One failed pod restarts the whole gang (all ranks resume from the checkpoint).
    Restarts after a disruption (eviction, preemption, drain) do not count
    against backoffLimit: the job did nothing wrong."""
    what = describe_failures(failed)
    limit = job.spec.run_policy.backoff_limit
    disruptions = int(update.after.get("disruptions") or 0)
    disrupted = is_disruption(failed)
    failures = attempt - disruptions  # restarts so far that counted
    _delete_pods(kube, ref.namespace, pods)
    if not disrupted and failures >= limit:
        message = f"{what}; backoffLimit {limit} reached after {failures} restart(s) for failures"
        update.set_condition("PodsReady", "False", "BackoffLimitExceeded", message)
        _fail(update, "BackoffLimitExceeded", message, emit)
        return DONE
    if memo.get("restarted_attempt") == attempt:
        return DONE  # this failure was handled; the status patch is on its way
    memo["restarted_attempt"] = attempt
    counted = (
        f"a disruption, not counted against backoffLimit {limit}"
        if disrupted
        else f"failure {failures + 1} of backoffLimit {limit}"
    )
    message = (
        f"{what}: restarting all pods from the last checkpoint (restart {attempt + 1}, {counted})"
    )
    update.set("restarts", attempt + 1)
    if disrupted:
        update.set("disruptions", disruptions + 1)
    reason = "PodDisrupted" if disrupted else "PodFailed"
    update.set_condition("PodsReady", "False", "Restarting", message)
    update.set_condition("Running", "False", reason, message)
    update.set_phase("Restarting")
    metrics.RESTARTS.labels(cause="disruption" if disrupted else "failure").inc()
    emit("Warning", reason, message)
    return DONE


def _create_children(
    ref: JobRef,
    job: Any,
    topology: Topology,
    config: OperatorConfig,
    attempt: int,
    current: list[PodView],
    kube: Kube,
) -> None:
    """Everything the pods need, then the missing pods. Creates answering 409
    (there already) are the normal case after a restart of the operator."""
    kube.create(build_secret(ref, new_token()))
    kube.create(build_service(ref))
    for obj in build_coordinator_rbac(ref):
        kube.create(obj)
    group = build_pod_group(ref, job, topology.world_size + 1)
    if group is not None:
        kube.create(group)
    present = {p.name for p in current}
    wanted = [build_coordinator_pod(ref, job, config, topology, attempt)]
    wanted += build_worker_pods(ref, job, config, topology, attempt)
    for pod in wanted:
        if pod["metadata"]["name"] not in present:
            kube.create(pod)
