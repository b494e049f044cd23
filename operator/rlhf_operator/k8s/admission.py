"""Admission: a job starts only when every GPU its plan needs is free. Pure.

Without a batch scheduler (`runPolicy.scheduling` names none) the operator is the
queue. A GPU job waits in phase Queued until its whole gang fits at once, so no
job starts part of its pods and holds GPUs another job waits for (two such jobs
would deadlock each other). Free is counted, not allocatable:

- a node's free GPUs are its allocatable `nvidia.com/gpu` less what the pods
  bound to it request (every pod of the cluster the operator sees, not only its
  own, and not those that have ended);
- jobs already admitted whose pods are not bound yet (just created, or
  restarting) still need their GPUs: each unbound pod takes its share off the
  node with the most free GPUs, before the job asking is fitted;
- the job fits when its eligible nodes (`inventory.eligible`) offer as many
  slots of `gpusPerNode` free GPUs as it has worker pods.

Jobs wait in order: higher PriorityClass value first, then creation time. A job
is admitted only if no job ahead of it in that order is still waiting for the
same nodes (strict FIFO, as Kueue's StrictFIFO queues: a large job is never
starved by smaller ones that keep fitting in before it). Jobs that could not
share a node (disjoint eligible nodes) do not wait for each other.

When a batch scheduler or Kueue admits the job instead, the operator leaves
admission to it (`builders.scheduling_mode`).
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from ..api.spec import Resources
from . import names
from .inventory import NodeGPUs, eligible
from .pods import pod_gpus
from .status import TERMINAL, is_true


@dataclass(frozen=True)
class GpuPod:
    """A pod of the cluster that requests GPUs (kept in the operator's index)."""

    namespace: str
    name: str
    node_name: str  # "" until bound
    gpus: int
    job: tuple[str, str] | None = None
    """(namespace, name) of the RLHFJob it belongs to, if one of ours."""
    worker: bool = False
    """One of our worker pods (they hold the job's GPUs)."""
    deleting: bool = False
    """Being deleted (a restart's old pods): not one of the job's pods to come."""


@dataclass(frozen=True)
class QueueEntry:
    """A GPU job as admission sees it (kept in the operator's index of jobs)."""

    namespace: str
    name: str
    created: str  # RFC 3339: sorts as time
    priority_class: str | None
    resources: Resources
    pods: int  # worker pods (plan nodes)
    per_node: int  # GPUs per worker pod
    admitted: bool
    """Its Admitted condition is True: it holds its GPUs until it ends or is suspended."""
    waiting: bool
    """Not admitted, not finished, not suspended, and the cluster could run it: Queued."""
    done: bool = False
    """Finished or suspended: holds nothing, waits for nothing."""

    @property
    def key(self) -> tuple[str, str]:
        return (self.namespace, self.name)


@dataclass(frozen=True)
class Decision:
    admit: bool
    reason: str  # Admitted | WaitingForGPUs | Queued
    message: str
    free_gpus: int


def free_gpus(nodes: Sequence[NodeGPUs], pods: Sequence[GpuPod]) -> dict[str, int]:
    """Each node's allocatable GPUs less what the pods bound to it request."""
    free = {n.name: n.gpus for n in nodes}
    for p in pods:
        if p.node_name in free:
            free[p.node_name] -= p.gpus
    return {name: max(0, gpus) for name, gpus in free.items()}


def usable(job: QueueEntry, nodes: Sequence[NodeGPUs]) -> list[NodeGPUs]:
    """The nodes a job's worker pods can run on: eligible, and with a pod's GPUs."""
    return [n for n in nodes if eligible(job.resources, n) and n.gpus >= job.per_node]


def reserve_unbound(
    free: dict[str, int],
    admitted: Sequence[QueueEntry],
    pods: Sequence[GpuPod],
    nodes: Sequence[NodeGPUs],
) -> dict[str, int]:
    """`free` less the GPUs admitted jobs still need for their pods not bound yet, each
    taken off the job's usable node with the most free GPUs."""
    left = dict(free)
    for job in admitted:
        bound = sum(
            1 for p in pods if p.job == job.key and p.worker and p.node_name and not p.deleting
        )
        its = {n.name for n in usable(job, nodes)}
        for _ in range(max(0, job.pods - bound)):
            fits = [n for n, g in left.items() if g >= job.per_node and n in its]
            if not fits:
                break
            best = max(fits, key=lambda n: (left[n], n))
            left[best] -= job.per_node
    return left


def _order(entry: QueueEntry, priorities: dict[str, int]) -> tuple[int, str, str, str]:
    priority = priorities.get(entry.priority_class or "", 0)
    return (-priority, entry.created, entry.namespace, entry.name)


def decide(
    job: QueueEntry,
    nodes: Sequence[NodeGPUs],
    pods: Sequence[GpuPod],
    queue: Sequence[QueueEntry],
    priorities: dict[str, int],
) -> Decision:
    """Whether `job` may start now; if not, a one-line reason for its condition."""
    mine = usable(job, nodes)
    names = {n.name for n in mine}
    need = job.pods * job.per_node
    if sum(n.gpus // job.per_node for n in mine) < job.pods:
        # Nodes went away since it was planned: it could not run even on an idle cluster,
        # and must not hold the queue for the jobs behind it.
        return Decision(
            False,
            "InsufficientGPUs",
            f"needs {need} GPUs ({job.pods} pod(s) x {job.per_node}); the eligible nodes "
            f"have {sum(n.gpus for n in mine)} in all",
            0,
        )
    others = [q for q in queue if q.key != job.key]
    admitted = [q for q in others if q.admitted]
    left = reserve_unbound(free_gpus(nodes, pods), admitted, pods, nodes)
    free_here = sum(left[n] for n in names)
    slots = sum(left[n] // job.per_node for n in names)
    ahead = [
        q
        for q in others
        if q.waiting
        and _order(q, priorities) < _order(job, priorities)
        and names & {n.name for n in usable(q, nodes)}
    ]
    if ahead:
        first = min(ahead, key=lambda q: _order(q, priorities))
        return Decision(
            False,
            "Queued",
            f"queued behind {len(ahead)} job(s) for the same nodes, first "
            f"{first.namespace}/{first.name}; needs {need} GPUs, {free_here} free",
            free_here,
        )
    if slots < job.pods:
        return Decision(
            False,
            "WaitingForGPUs",
            f"needs {need} GPUs ({job.pods} pod(s) x {job.per_node}); {free_here} free on "
            f"{len(names)} eligible node(s), {slots} pod(s) would fit",
            free_here,
        )
    return Decision(True, "Admitted", f"{need} GPUs free for its {job.pods} pod(s)", free_here)


def gpu_pod(body: dict[str, Any]) -> GpuPod | None:
    """The index entry of a pod that holds (or will hold) GPUs; None for any other,
    and for one that has ended (its GPUs are free)."""
    gpus = pod_gpus(body)
    phase = (body.get("status") or {}).get("phase")
    if gpus <= 0 or phase in TERMINAL:
        return None
    meta = body.get("metadata") or {}
    labels = meta.get("labels") or {}
    namespace = str(meta.get("namespace") or "")
    job = labels.get(names.LABEL_JOB) if labels.get(names.MANAGED_BY) == names.MANAGER else None
    return GpuPod(
        namespace=namespace,
        name=str(meta.get("name") or ""),
        node_name=str((body.get("spec") or {}).get("nodeName") or ""),
        gpus=gpus,
        job=(namespace, str(job)) if job else None,
        worker=labels.get(names.LABEL_COMPONENT) == names.WORKER,
        deleting=bool(meta.get("deletionTimestamp")),
    )


def queue_entry(body: dict[str, Any]) -> QueueEntry | None:
    """The index entry of an RLHFJob the operator admits itself: a GPU job that names
    no batch scheduler. None for any other (and for a spec that does not validate:
    it fails before it could be admitted)."""
    spec = body.get("spec") or {}
    scheduling = (spec.get("runPolicy") or {}).get("scheduling") or {}
    if scheduling.get("schedulerName") or scheduling.get("queue"):
        return None
    try:
        resources = Resources.model_validate(spec.get("resources") or {})
    except ValidationError:
        return None
    if resources.local is not None or not resources.gpus:
        return None
    per_node = min(resources.gpus_per_node, resources.gpus)
    meta = body.get("metadata") or {}
    status = body.get("status") or {}
    phase = status.get("phase")
    done = phase in TERMINAL or bool(spec.get("suspend"))
    admitted = is_true(status, "Admitted") and not done
    return QueueEntry(
        namespace=str(meta.get("namespace") or ""),
        name=str(meta.get("name") or ""),
        created=str(meta.get("creationTimestamp") or ""),
        priority_class=scheduling.get("priorityClassName"),
        resources=resources,
        pods=resources.gpus // per_node,
        per_node=per_node,
        admitted=admitted,
        waiting=phase == "Queued" and not admitted and not done,
        done=done,
    )


class Admissions:
    """This operator's admission decisions, one at a time: two jobs reconciled at once
    must not both take the same free GPUs. It also remembers the jobs it admitted until
    the index of jobs shows their Admitted condition (the status patch is on its way)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._recent: dict[tuple[str, str], QueueEntry] = {}

    def decide(
        self,
        job: QueueEntry,
        nodes: Sequence[NodeGPUs],
        pods: Sequence[GpuPod],
        queue: Sequence[QueueEntry],
        priorities: dict[str, int],
    ) -> Decision:
        with self._lock:
            indexed = {q.key: q for q in queue}
            for key in list(self._recent):
                seen = indexed.get(key)
                if seen is None or seen.admitted or seen.done:
                    del self._recent[key]  # gone, shown admitted, or finished/suspended
            everyone = {**indexed, **self._recent}
            decision = decide(job, nodes, pods, list(everyone.values()), priorities)
            if decision.admit:
                self._recent[job.key] = dataclasses.replace(job, admitted=True, waiting=False)
            else:  # admitted before, but its status never said so: it holds nothing now
                self._recent.pop(job.key, None)
            return decision
