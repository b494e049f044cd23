"""One reconciliation of one RLHFJob: compare what should exist with what does
and make one step towards it. Level-based: it looks only at the job (body),
its pods (from kopf's index) and the nodes (idem), never at what happened
before, so running it twice, or after an operator restart, changes nothing.

The order of checks is the job's lifecycle: finished -> valid -> suspended ->
planned (enough GPUs in the cluster) -> admitted (its GPUs free now, `admission`;
else Queued) -> deadline -> pods (failed: once the failures settle, restart the
gang or fail past backoffLimit; coordinator succeeded: done; all running: Running).
"""

from __future__ import annotations

import datetime
import logging
import time
from collections.abc import Callable, MutableMapping
from dataclasses import dataclass
from typing import Any

from kubernetes.client.exceptions import ApiException

from ..api import validate_object
from ..api.manifests import one_line
from ..api.pod_policy import policy_errors
from ..api.spec import IMMUTABLE
from ..controlplane import tls
from ..controlplane.tokens import new_token
from ..planner import PlanError, plan_job
from . import frozen, metrics, names
from .admission import Decision, QueueEntry, queue_entry
from .builders import (
    JobRef,
    Topology,
    build_children,
    build_config_map,
    job_manifest_yaml,
    pod_count,
    scheduling_mode,
    topology_for,
)
from .config import OperatorConfig
from .inventory import NodeGPUs, capacity
from .kube import Kube
from .pods import (
    KUEUE_RETRIABLE,
    PodView,
    describe_failures,
    failures_settled,
    gone,
    holds_gpus,
    is_disruption,
    why_waiting,
)
from .status import TERMINAL, StatusUpdate, condition, is_true, iso, parse_time, plan_summary

log = logging.getLogger(__name__)

Emit = Callable[[str, str, str], None]  # (type Normal|Warning, reason, message)
Admit = Callable[[QueueEntry], Decision]  # admission.Admissions.decide over the indexes


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


def _end_pods(kube: Kube, namespace: str, spec: dict[str, Any], pods: list[PodView]) -> None:
    """Pods of a job that is done with them (finished, failed, past its deadline,
    suspended). A Kueue pod group is first marked not retriable, so that Kueue
    finishes its Workload once they end and releases the quota; without the mark
    it would wait for replacement pods and hold the quota for good."""
    if is_kueue(spec):
        for p in pods:
            if not p.not_retriable:
                kube.patch("Pod", namespace, p.name, NOT_RETRIABLE)
    _delete_pods(kube, namespace, [p for p in pods if p.phase not in TERMINAL])


NOT_RETRIABLE = {"metadata": {"annotations": {KUEUE_RETRIABLE: "false"}}}


def is_kueue(spec: dict[str, Any]) -> bool:
    """The job's pods are a Kueue pod group (`builders.scheduling_mode`), from its spec."""
    scheduling = (spec.get("runPolicy") or {}).get("scheduling") or {}
    return bool(scheduling.get("queue")) and not scheduling.get("schedulerName")


def reconcile(
    body: dict[str, Any],
    pods: list[PodView],
    nodes: list[NodeGPUs],
    kube: Kube,
    config: OperatorConfig,
    memo: MutableMapping[str, Any],
    emit: Emit,
    now: datetime.datetime,
    admit: Admit | None = None,
) -> Result:
    meta = body.get("metadata") or {}
    ref = JobRef(str(meta.get("name")), str(meta.get("namespace")), str(meta.get("uid")))
    update = StatusUpdate(body.get("status"), int(meta.get("generation") or 1), now)
    try:
        result = _reconcile(body, ref, update, pods, nodes, kube, config, memo, emit, now, admit)
    finally:
        patch = update.patch()
        if patch is not None and not memo.get("deleted"):
            try:
                kube.patch_job_status(ref.namespace, ref.name, patch)
            except ApiException as exc:
                if exc.status == 422:  # a phase or condition the installed CRD does not know
                    log.error(
                        "the API server refused %s/%s's status (%s): is the installed CRD "
                        "older than the operator? kubectl apply --server-side -f crds/",
                        ref.namespace,
                        ref.name,
                        one_line(str(exc.body or exc.reason)),
                    )
                raise
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
    admit: Admit | None,
) -> Result:
    status = update.after

    if update.phase in TERMINAL:
        return _finished(body, ref, update, pods, kube, memo, now)

    job, errors = validate_object(_job_object(body), policy=None)
    if job is not None and not is_true(update.before, "Planned"):
        # The pod policy is the operator's, and holds a job to it before it starts: a
        # policy tightened later does not fail jobs that run.
        errors += policy_errors(job, config.pod_policy)
    if job is None or errors:
        message = one_line("; ".join(str(e) for e in errors))
        update.set_condition("Valid", "False", "InvalidSpec", message)
        _fail(update, "InvalidSpec", message, emit)
        return DONE
    update.set_condition("Valid", "True", "Validated", "the spec is valid")
    if is_true(update.before, "Planned"):
        job, body = _as_planned(body, job, ref, update, kube, memo, emit)

    if job.spec.suspend:
        return _suspend(ref, body.get("spec") or {}, update, pods, kube, emit)
    if is_true(status, "Suspended"):
        update.set_condition("Suspended", "False", "Resumed", "the job was resumed")
        update.set("startTime", None)  # the deadline counts from the resume
        update.set("attempt", current_attempt(status) + 1)  # new pods, new names
        # The suspended Kueue pod group finished (its quota released): a new one.
        update.set("podGroup", names.kueue_group_name(ref.name, current_attempt(status)))
        emit("Normal", "Resumed", "pods are created again; the job resumes from its checkpoint")

    if not is_true(status, "Planned"):
        result = _plan(body, ref, job, update, nodes, kube, emit)
        if result is not None:
            return result

    entry = queue_entry(body)
    attempt = current_attempt(status)
    has_pods = any(p.attempt == attempt and not p.deleting for p in pods)
    if entry is not None and not is_true(status, "Admitted") and has_pods:
        # Its pods exist: it was admitted (a body older than that patch, or a job started
        # before admission existed, across an operator upgrade). It holds its GPUs.
        update.set_condition("Admitted", "True", "Started", "its pods were created")
    elif admit is not None and entry is not None and not is_true(status, "Admitted"):
        decision = admit(entry)
        if not decision.admit:
            if update.set_condition("Admitted", "False", decision.reason, decision.message):
                emit("Normal", decision.reason, decision.message)
            # Pending, not Queued, when the cluster could not run it at all: it does not
            # hold the queue for the jobs behind it.
            update.set_phase("Pending" if decision.reason == "InsufficientGPUs" else "Queued")
            return Result("wait", decision.message, -1.0)
        update.set_condition("Admitted", "True", "GPUsFree", decision.message)
        emit("Normal", "Admitted", decision.message)

    deadline = job.spec.run_policy.active_deadline_seconds
    started = parse_time(status.get("startTime"))
    if deadline and started and (now - started).total_seconds() > deadline:
        _end_pods(kube, ref.namespace, body.get("spec") or {}, pods)
        message = f"the job ran longer than activeDeadlineSeconds ({deadline} s)"
        _fail(update, "DeadlineExceeded", message, emit)
        return DONE

    # The planner's cluster is the spec's (planner.cluster_for): nodes x per node.
    topology = topology_for(job)
    return _run(ref, job, update, topology, pods, nodes, kube, config, memo, emit, now)


def _as_planned(
    body: dict[str, Any],
    job: Any,
    ref: JobRef,
    update: StatusUpdate,
    kube: Kube,
    memo: MutableMapping[str, Any],
    emit: Emit,
) -> tuple[Any, dict[str, Any]]:
    """The job as it was planned, with the fields meant to change from its spec now
    (`frozen`): an edit an older CRD let through is refused here, not acted on."""
    refused = condition(update.before, "SpecAccepted")
    edited = update.generation != update.before.get("observedGeneration")
    if not edited and not (refused and refused.get("status") == "False"):
        return job, body  # nothing changed since the spec was last accepted
    if "planned_spec" not in memo:
        config_map = kube.get("ConfigMap", ref.namespace, names.config_map_name(ref.name))
        manifest = frozen.planned_manifest(config_map, names.CONFIG_KEY_JOB)
        planned, _ = validate_object(manifest, policy=None) if manifest else (None, [])
        if planned is None:
            return job, body  # no plan to hold on to (it was deleted): take the spec as it is
        memo["planned_spec"] = planned.to_manifest()["spec"]
    planned_spec = memo["planned_spec"]
    current = job.to_manifest()["spec"]
    changed = frozen.changed_fields(planned_spec, current)
    if not changed:
        if refused is not None:
            update.set_condition("SpecAccepted", "True", "Reverted", "the spec is as planned again")
        return job, body
    message = one_line(
        f"{', '.join(changed)} changed after the job was planned: refused, the job runs the "
        f"spec it was planned with ({IMMUTABLE})"
    )
    if update.set_condition("SpecAccepted", "False", "ImmutableFieldChanged", message):
        emit("Warning", "ImmutableFieldChanged", message)
    update.generation = int(update.before.get("observedGeneration") or 0)  # not acted upon
    body = {**body, "spec": frozen.effective_spec(planned_spec, current)}
    effective, _ = validate_object(_job_object(body), policy=None)
    return (effective if effective is not None else job), body


def current_attempt(status: dict[str, Any]) -> int:
    """The attempt the job's pods belong to (their names and `rlhf.dev/attempt`): one
    more at every restart and every resume. A status written before the field was
    there counts its restarts."""
    return int(status.get("attempt", status.get("restarts")) or 0)


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
    spec = body.get("spec") or {}
    _end_pods(kube, ref.namespace, spec, pods)
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
    ref: JobRef,
    spec: dict[str, Any],
    update: StatusUpdate,
    pods: list[PodView],
    kube: Kube,
    emit: Emit,
) -> Result:
    """Pods go; the ConfigMap, Secret, Service and checkpoints stay for the resume."""
    _end_pods(kube, ref.namespace, spec, pods)
    message = "spec.suspend is true: pods removed, checkpoints kept"
    if is_true(update.after, "Admitted"):  # its GPUs go back; a resume queues again
        update.set_condition("Admitted", "False", "Suspended", message)
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
    nodes: list[NodeGPUs],
    kube: Kube,
    config: OperatorConfig,
    memo: MutableMapping[str, Any],
    emit: Emit,
    now: datetime.datetime,
) -> Result:
    status = update.after
    attempt = current_attempt(status)
    current = [p for p in pods if p.attempt == attempt and not p.deleting]
    stale = [p for p in pods if p.attempt != attempt or p.deleting]

    coordinator = next((p for p in current if p.component == names.COORDINATOR), None)
    if coordinator is not None and coordinator.phase == "Succeeded":
        _end_pods(kube, ref.namespace, job.spec.to_manifest(), pods)
        message = "the coordinator finished the training"
        update.set_condition("Succeeded", "True", "Completed", message)
        update.set_condition("Running", "False", "Completed", message)
        if update.phase != "Succeeded":
            metrics.FINISHED.labels(result="Succeeded").inc()
            emit("Normal", "Succeeded", message)
        update.set_phase("Succeeded")
        return DONE

    expected = pod_count(topology)
    failed = [p for p in current if p.phase == "Failed"]
    # A pod of this attempt that vanished or is being deleted after all were
    # running failed too (deleted by hand, evicted, preempted): the gang cannot go
    # on without it. One still terminating says why (its DisruptionTarget).
    if not failed and is_true(status, "PodsReady") and len(current) < expected:
        present = {p.name for p in current}
        leaving = {p.name: p for p in pods if p.attempt == attempt and p.deleting}
        wanted = [names.coordinator_pod_name(ref.name, attempt)] + [
            names.worker_name(ref.name, n, attempt) for n in range(topology.nodes)
        ]
        failed = [gone(n, attempt, leaving.get(n)) for n in wanted if n not in present]
    if failed:
        if not failures_settled(current, failed, config.failure_settle_seconds, now):
            return Result(
                "wait", f"{len(failed)} pod(s) failed: waiting for the others to end", 1.0
            )
        return _restart(ref, job, update, attempt, failed, pods, kube, memo, emit)

    if stale:
        _delete_pods(kube, ref.namespace, stale)
        # Names carry the attempt, so the new pods need only the GPUs the old ones hold:
        # a pod stuck Terminating on a lost (not Ready) node, or never bound, holds none.
        holding = holds_gpus(stale, nodes)
        if holding:
            return Result(
                "wait",
                f"waiting for {len(holding)} pod(s) of an earlier attempt to free their GPUs",
                1.0,
            )

    if len(current) < expected:
        # New pods always obey the policy in force (a job planned under an older one too).
        refused = policy_errors(job, config.pod_policy)
        if refused:
            message = one_line("; ".join(str(e) for e in refused))
            update.set_condition("Valid", "False", "InvalidSpec", message)
            _fail(update, "InvalidSpec", message, emit)
            return DONE
        host_bytes = int((status.get("plan") or {}).get("hostBytesPerDevice") or 0)
        group = status.get("podGroup")
        if group is None and scheduling_mode(job) == "kueue":
            # The group its pods already have (pods an older operator made), else a new one.
            group = next((p.kueue_group for p in pods if p.kueue_group), None)
            group = group or names.kueue_group_name(ref.name, attempt)
            update.set("podGroup", group)
        _create_children(ref, job, topology, config, attempt, current, kube, host_bytes, group)
        if not status.get("startTime"):
            update.set("startTime", iso(now))
        update.set_phase("Restarting" if status.get("restarts") else "Starting")
        update.set_condition(
            "PodsReady", "False", "Creating", f"creating {expected} pods (attempt {attempt})"
        )
        return DONE

    if scheduling_mode(job) == "kueue":
        queued = _kueue_admission(job, update, current, emit)
        if queued is not None:
            return queued

    running = [p for p in current if p.phase == "Running"]
    # More than expected: pods an older operator made (one per rank) still run the job.
    if len(running) >= expected:
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
        message = f"{waiting} of {expected} pods not running yet"
        why = why_waiting(current)
        reason = "Waiting"
        if why is not None:
            reason, detail, problem = why
            message = f"{message}: {detail}"
            if update.set_condition("PodsReady", "False", reason, message):
                emit("Warning" if problem else "Normal", reason, message)
        update.set_condition("PodsReady", "False", reason, message)
    return DONE


def _kueue_admission(
    job: Any, update: StatusUpdate, current: list[PodView], emit: Emit
) -> Result | None:
    """Kueue admits a pod group by lifting the scheduling gate its webhook put on every
    pod: while any is gated the job is Queued (after a preemption too: Kueue stops the
    group and the replacement pods wait for it again). Pods Kueue never took in (no
    `kueue.x-k8s.io/managed` label) run without its quota: said once, as a warning."""
    queue = job.spec.run_policy.scheduling.queue
    gated = [p for p in current if p.waiting == "SchedulingGated"]
    if gated:
        message = (
            f"waiting for Kueue to admit the pod group (LocalQueue {queue}): "
            f"{len(gated)} of {len(current)} pod(s) gated"
        )
        if update.set_condition("Admitted", "False", "WaitingForKueue", message):
            emit("Normal", "WaitingForKueue", message)
        update.set_phase("Queued")
        return Result("wait", message, -1.0)
    if current and not any(p.kueue_managed for p in current):
        message = (
            "Kueue did not take the pods in (no kueue.x-k8s.io/managed label): the namespace "
            "is outside its managedJobsNamespaceSelector or its pod integration is off; "
            "the job runs without Kueue's quota"
        )
        if update.set_condition("Admitted", "True", "NotManagedByKueue", message):
            emit("Warning", "NotManagedByKueue", message)
        return None
    if current and update.set_condition(
        "Admitted", "True", "AdmittedByKueue", f"Kueue admitted the pod group (LocalQueue {queue})"
    ):
        emit("Normal", "AdmittedByKueue", f"Kueue admitted the pod group (LocalQueue {queue})")
    return None


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
    restarts = int(update.after.get("restarts") or 0)
    failures = restarts - disruptions  # restarts so far that counted
    if not disrupted and failures >= limit:
        _end_pods(kube, ref.namespace, job.spec.to_manifest(), pods)
        _delete_pods(kube, ref.namespace, [p for p in pods if p.phase in TERMINAL])
        message = f"{what}; backoffLimit {limit} reached after {failures} restart(s) for failures"
        update.set_condition("PodsReady", "False", "BackoffLimitExceeded", message)
        _fail(update, "BackoffLimitExceeded", message, emit)
        return DONE
    # Replacement pods of a Kueue group keep its Workload and quota: nothing to mark.
    _delete_pods(kube, ref.namespace, pods)
    if memo.get("restarted_attempt") == attempt:
        return DONE  # this failure was handled; the status patch is on its way
    memo["restarted_attempt"] = attempt
    counted = (
        f"a disruption, not counted against backoffLimit {limit}"
        if disrupted
        else f"failure {failures + 1} of backoffLimit {limit}"
    )
    message = (
        f"{what}: restarting all pods from the last checkpoint (restart {restarts + 1}, {counted})"
    )
    update.set("restarts", restarts + 1)
    update.set("attempt", attempt + 1)
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
    host_bytes_per_device: int,
    kueue_group: str | None,
) -> None:
    """Everything the pods need, then the missing pods. Creates answering 409
    (there already) are the normal case after a restart of the operator."""
    present = {p.name for p in current}
    objects = build_children(
        ref,
        job,
        config,
        topology,
        attempt,
        new_token(),
        host_bytes_per_device,
        kueue_group,
        # Made each time, kept only the first: a Secret that exists answers 409.
        certificates=tls.make_job_certificates(ref.name),
    )
    for obj in objects:
        if obj["kind"] != "Pod" or obj["metadata"]["name"] not in present:
            kube.create(obj)
