"""A job's pods as the operator sees them, and what their failures mean.

When one pod of the gang fails, the others follow within seconds: the
coordinator loses a worker and gives up, the workers lose the coordinator.
The kubelets report these failures independently, in no guaranteed order, so
the first failure the operator sees may be a bystander's. Two rules keep the
restart's event naming the pod that failed first:
- settle: restart only once every pod of the attempt has ended, or
  `settle_seconds` after the earliest failure (a hung pod must not hold the
  restart back for long);
- causes first: a pod that exited with `exits.PEER_LOST` only says that
  another pod went away, so it is listed after those that did not; a pod
  disrupted from outside (evicted, preempted) before all.
Each failure is reported with the line its process left in its termination
message (`exits.ending`): the restart deletes the pods and their logs.
Pure functions of the pods and the time: no API calls.
"""

from __future__ import annotations

import dataclasses
import datetime
from dataclasses import dataclass
from typing import Any

from ..controlplane import exits
from . import names
from .inventory import GPU_RESOURCE, NodeGPUs
from .status import TERMINAL, parse_time

DISRUPTION_CONDITIONS = ("DisruptionTarget", "TerminationTarget")
KUEUE_MANAGED_LABEL = "kueue.x-k8s.io/managed"
KUEUE_RETRIABLE = "kueue.x-k8s.io/retriable-in-group"
KUEUE_GROUP = "kueue.x-k8s.io/pod-group-name"


@dataclass(frozen=True)
class PodView:
    """What the operator needs of one of a job's pods (kept in kopf's index)."""

    name: str
    component: str
    node: int | None
    """A worker pod's plan node (annotation `rlhf.dev/node`); None for the coordinator."""
    attempt: int
    phase: str
    deleting: bool = False
    reason: str = ""
    exit_code: int | None = None
    """The main container's exit code once it has ended (None while it runs)."""
    finished_at: datetime.datetime | None = None
    """When the main container ended, as the kubelet reports it."""
    message: str = ""
    """The last line of the reason the process left (`exits.ending`), if any."""
    disrupted: bool = False
    """Kubernetes marked it DisruptionTarget (evicted, preempted, drained) or Kueue
    TerminationTarget (preempted): not its own failure."""
    node_name: str = ""
    """The Node it is bound to ("" until scheduled)."""
    gpus: int = 0
    """The nvidia.com/gpu its containers request."""
    waiting: str = ""
    """Why it is not running yet, as Kubernetes says (Unschedulable, SchedulingGated,
    ImagePullBackOff, ContainerCreating...); "" if it runs or has ended."""
    waiting_message: str = ""
    kueue_managed: bool = False
    """Kueue's webhook took it in (its label `kueue.x-k8s.io/managed: "true"`)."""
    not_retriable: bool = False
    """Marked `kueue.x-k8s.io/retriable-in-group: "false"`: its Kueue group is finished."""
    kueue_group: str = ""
    """Its `kueue.x-k8s.io/pod-group-name`, if any."""


def pod_view(body: dict[str, Any]) -> PodView:
    meta = body.get("metadata") or {}
    labels = meta.get("labels") or {}
    status = body.get("status") or {}
    node = (meta.get("annotations") or {}).get(names.ANNOTATION_NODE)
    # A pod evicted by the kubelet says why in its status (reason Evicted).
    reason = str(status.get("reason") or "")
    message = _last_line(str(status.get("message") or ""))
    exit_code: int | None = None
    finished_at: datetime.datetime | None = None
    for cs in status.get("containerStatuses") or []:
        term = (cs.get("state") or {}).get("terminated")
        if not term:
            continue
        exit_code = term.get("exitCode")
        finished_at = parse_time(term.get("finishedAt"))
        message = _last_line(str(term.get("message") or "")) or message
        if exit_code not in (None, 0):
            reason = f"{term.get('reason') or 'Error'}, exit code {exit_code}"
    # Preempted, evicted, drained or lost with its node: Kubernetes marks the pod
    # DisruptionTarget first, and Kueue marks the pods it stops (a preemption, an
    # eviction of the Workload) TerminationTarget. That is the cause; what the process
    # printed as it was stopped is not.
    disruption = next(
        (
            c
            for c in status.get("conditions") or []
            if c.get("type") in DISRUPTION_CONDITIONS and c.get("status") == "True"
        ),
        None,
    )
    if disruption is not None:
        reason = str(disruption.get("reason") or "DisruptionTarget")
        message = _last_line(str(disruption.get("message") or ""))
    return PodView(
        name=str(meta.get("name")),
        component=str(labels.get(names.LABEL_COMPONENT, "")),
        node=int(node) if node is not None and str(node).isdigit() else None,
        attempt=int(labels.get(names.LABEL_ATTEMPT, "0") or 0),
        phase=str(status.get("phase") or "Pending"),
        deleting=bool(meta.get("deletionTimestamp")),
        reason=reason,
        exit_code=exit_code,
        finished_at=finished_at,
        message=message,
        disrupted=disruption is not None,
        node_name=str((body.get("spec") or {}).get("nodeName") or ""),
        gpus=pod_gpus(body),
        kueue_managed=labels.get(KUEUE_MANAGED_LABEL) == "true",
        not_retriable=(meta.get("annotations") or {}).get(KUEUE_RETRIABLE) == "false",
        kueue_group=str(labels.get(KUEUE_GROUP) or ""),
        **_waiting(status, bool((body.get("spec") or {}).get("schedulingGates"))),
    )


def _waiting(status: dict[str, Any], gated: bool) -> dict[str, str]:
    """A pending pod's own reason: its scheduling gates (from its spec: the scheduler
    reports them only later), a container's waiting state (image pulls, bad config,
    creation), then the scheduler's (Unschedulable)."""
    if (status.get("phase") or "Pending") != "Pending":
        return {}
    if gated:
        return {"waiting": "SchedulingGated", "waiting_message": ""}
    for cs in status.get("containerStatuses") or []:
        waiting = (cs.get("state") or {}).get("waiting")
        if waiting and waiting.get("reason"):
            return {
                "waiting": str(waiting["reason"]),
                "waiting_message": _last_line(str(waiting.get("message") or "")),
            }
    for c in status.get("conditions") or []:
        if c.get("type") == "PodScheduled" and c.get("status") == "False" and c.get("reason"):
            return {
                "waiting": str(c["reason"]),
                "waiting_message": _last_line(str(c.get("message") or "")),
            }
    return {"waiting": "Pending", "waiting_message": ""}


# Waiting reasons that need someone to act (a Warning), most telling first; any other
# reason (ContainerCreating, PodInitializing, SchedulingGated, Pending) is a Normal wait.
PROBLEMS = (
    "InvalidImageName",
    "ErrImageNeverPull",
    "CreateContainerConfigError",
    "CreateContainerError",
    "ImagePullBackOff",
    "ErrImagePull",
    "CrashLoopBackOff",
    "Unschedulable",
)
_NORMAL_ORDER = ("SchedulingGated", "ContainerCreating", "PodInitializing", "Pending")


def why_waiting(pods: list[PodView]) -> tuple[str, str, bool] | None:
    """(reason, message, is_a_problem) for a condition and an event, from the pods
    that are not running yet: the most telling reason, with how many pods have it
    and the first one's message. None when none waits."""
    waiting = [p for p in pods if p.waiting]
    if not waiting:
        return None

    def rank(reason: str) -> int:
        if reason in PROBLEMS:
            return PROBLEMS.index(reason)
        if reason in _NORMAL_ORDER:
            return len(PROBLEMS) + 1 + _NORMAL_ORDER.index(reason)
        return len(PROBLEMS)  # a reason this list does not know: likely worth reading

    reason = min((p.waiting for p in waiting), key=rank)
    these = sorted((p for p in waiting if p.waiting == reason), key=lambda p: p.name)
    first = these[0]
    message = f"{len(these)} pod(s) {reason}: {first.name}"
    if first.waiting_message:
        message += f" ({first.waiting_message})"
    return reason, message, rank(reason) <= len(PROBLEMS)


def pod_gpus(body: dict[str, Any]) -> int:
    """The GPUs a pod holds while it runs: its containers' nvidia.com/gpu requests
    (or limits, which Kubernetes copies into requests for extended resources)."""
    total = 0
    for c in (body.get("spec") or {}).get("containers") or []:
        res = c.get("resources") or {}
        raw = (res.get("requests") or {}).get(GPU_RESOURCE) or (res.get("limits") or {}).get(
            GPU_RESOURCE
        )
        try:
            total += int(str(raw or 0))
        except ValueError:
            continue
    return total


def holds_gpus(pods: list[PodView], nodes: list[NodeGPUs]) -> list[PodView]:
    """The pods among `pods` whose GPUs are not free yet: bound to a node that is
    there and Ready, not finished. A pod stuck Terminating on a lost node (not Ready,
    or gone) holds nothing a new pod could use; neither does one never bound."""
    ready = {n.name for n in nodes if n.ready}
    return [p for p in pods if p.gpus > 0 and p.node_name in ready and p.phase not in TERMINAL]


def _last_line(text: str, limit: int = 240) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    line = lines[-1] if lines else ""
    return line if len(line) <= limit else line[: limit - 3] + "..."


def gone(name: str, attempt: int, leaving: PodView | None) -> PodView:
    """The failure of a pod of the running gang that is gone or being deleted:
    the view of one still terminating (which may say why: evicted, preempted),
    else only that it was deleted."""
    if leaving is None:
        return PodView(name, "", None, attempt, "Failed", reason="deleted")
    return dataclasses.replace(leaving, reason=leaving.reason or "deleted")


def is_consequence(pod: PodView) -> bool:
    """The pod ended because another pod of the job went away."""
    return pod.exit_code == exits.PEER_LOST


def failures_settled(
    pods: list[PodView],
    failed: list[PodView],
    settle_seconds: float,
    now: datetime.datetime,
) -> bool:
    """Whether to restart now: every pod has ended, or the earliest failure is
    `settle_seconds` old. A failure without an end time (a pod that vanished)
    gives nothing to wait from: restart now."""
    if all(p.phase in TERMINAL for p in pods):
        return True
    times = [p.finished_at for p in failed if p.finished_at is not None]
    if not times or len(times) < len(failed):
        return True
    return (now - min(times)).total_seconds() >= settle_seconds


def causes_first(failed: list[PodView]) -> list[PodView]:
    """The failures in the order to report them: disruptions (which come from
    outside the job, and whose pods often have no end time yet), then other
    causes, then consequences; within each, earliest first (the kubelet's times
    have whole seconds), then by name."""
    latest = datetime.datetime.max.replace(tzinfo=datetime.UTC)

    def key(p: PodView) -> tuple[bool, bool, datetime.datetime, str]:
        return (is_consequence(p), not p.disrupted, p.finished_at or latest, p.name)

    return sorted(failed, key=key)


def is_disruption(failed: list[PodView]) -> bool:
    """Whether the failure that came first is a disruption (the others followed it)."""
    return bool(failed) and causes_first(failed)[0].disrupted


def describe_failures(failed: list[PodView], shown: int = 3) -> str:
    """One line for a condition and an event: the first `shown` failures, causes first."""
    ordered = causes_first(failed)
    what = ", ".join(_one_failure(p) for p in ordered[:shown])
    if len(ordered) > shown:
        what += f" and {len(ordered) - shown} more"
    return what


def _one_failure(pod: PodView) -> str:
    why = pod.reason or "failed"
    return f"{pod.name} ({why}: {pod.message})" if pod.message else f"{pod.name} ({why})"
