"""What the operator reads from a job's pods, and the order it reports failures in: pure."""

from __future__ import annotations

import datetime

from rlhf_operator.controlplane import exits
from rlhf_operator.k8s.inventory import NodeGPUs
from rlhf_operator.k8s.pods import (
    PodView,
    causes_first,
    describe_failures,
    failures_settled,
    gone,
    holds_gpus,
    is_disruption,
    pod_view,
    why_waiting,
)

T0 = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)


def at(seconds: float) -> datetime.datetime:
    return T0 + datetime.timedelta(seconds=seconds)


def ended(name: str, code: int, seconds: float) -> PodView:
    return PodView(
        name,
        "worker",
        0,
        1,
        "Failed",
        reason=f"Error, exit code {code}",
        exit_code=code,
        finished_at=at(seconds),
    )


def running(name: str) -> PodView:
    return PodView(name, "worker", 0, 1, "Running")


def test_pod_view_reads_the_exit_code_and_end_time():
    state = {"terminated": {"exitCode": 5, "reason": "Error", "finishedAt": "2026-01-01T00:00:07Z"}}
    view = pod_view(
        {"metadata": {"name": "j-worker-0"}, "status": {"containerStatuses": [{"state": state}]}}
    )
    assert view.exit_code == 5 and view.finished_at == at(7)
    assert view.reason == "Error, exit code 5"
    assert pod_view({"metadata": {"name": "p"}, "status": {"phase": "Running"}}).exit_code is None


def test_the_reason_a_process_left_is_read_and_reported_with_its_pod():
    state = {
        "terminated": {
            "exitCode": 2,
            "reason": "Error",
            "message": "a warning\nrlhf-worker: RLHF_WORKER_HANDLERS: cannot import 'x'\n",
        }
    }
    view = pod_view(
        {"metadata": {"name": "j-worker-1"}, "status": {"containerStatuses": [{"state": state}]}}
    )
    assert view.message == "rlhf-worker: RLHF_WORKER_HANDLERS: cannot import 'x'"
    assert describe_failures([view]) == (
        "j-worker-1 (Error, exit code 2: rlhf-worker: RLHF_WORKER_HANDLERS: cannot import 'x')"
    )
    state["terminated"]["message"] = "y" * 1000
    assert len(pod_view({"status": {"containerStatuses": [{"state": state}]}}).message) == 240


def test_a_peer_lost_exit_is_reported_after_the_failure_that_caused_it():
    bystander = ended("j-worker-0", exits.PEER_LOST, 1)
    coordinator = ended("j-coordinator", exits.PEER_LOST, 1)
    killed = ended("j-worker-1", 137, 2)  # seen later, and a later second: still the cause
    assert [p.name for p in causes_first([bystander, coordinator, killed])] == [
        "j-worker-1",
        "j-coordinator",
        "j-worker-0",
    ]
    assert describe_failures([bystander, killed], shown=1) == (
        "j-worker-1 (Error, exit code 137) and 1 more"
    )


def test_causes_are_ordered_by_when_they_ended():
    first, second = ended("b", 1, 3), ended("a", 137, 4)
    assert causes_first([second, first]) == [first, second]


def test_a_restart_waits_for_the_gang_to_end_but_not_past_the_settle_time():
    failed = [ended("j-worker-0", exits.PEER_LOST, 10)]
    pods = [*failed, running("j-worker-1")]
    assert not failures_settled(pods, failed, 5.0, at(12))
    assert failures_settled(pods, failed, 5.0, at(15))
    everyone = [*failed, ended("j-worker-1", 137, 11)]
    assert failures_settled(everyone, everyone, 5.0, at(11))


def test_a_failure_without_an_end_time_restarts_at_once():
    vanished = PodView("j-worker-1", "", None, 1, "Failed", reason="deleted")
    assert failures_settled([vanished, running("j-worker-0")], [vanished], 5.0, at(0))


def test_a_disruption_is_the_reason_not_what_the_stopped_process_printed():
    evicted = {
        "metadata": {"name": "j-worker-2", "deletionTimestamp": "2026-01-01T00:00:09Z"},
        "status": {
            "phase": "Failed",
            "conditions": [
                {
                    "type": "DisruptionTarget",
                    "status": "True",
                    "reason": "EvictionByEvictionAPI",
                    "message": "Eviction API: evicting",
                }
            ],
            "containerStatuses": [
                {"state": {"terminated": {"exitCode": 143, "message": "INFO iteration 7"}}}
            ],
        },
    }
    view = pod_view(evicted)
    assert (view.reason, view.message, view.exit_code, view.disrupted) == (
        "EvictionByEvictionAPI",
        "Eviction API: evicting",
        143,
        True,
    )
    # The others fail after it, some of them not cleanly (a collective cut short);
    # the disruption, with no end time yet, still comes first.
    bystander, broken = ended("j-worker-0", exits.PEER_LOST, 9), ended("j-worker-1", 1, 8)
    assert causes_first([bystander, broken, view]) == [view, broken, bystander]
    assert is_disruption([bystander, broken, view])
    assert not is_disruption([bystander, broken]) and not is_disruption([])
    pressure = {
        "metadata": {"name": "j-worker-3"},
        "status": {
            "phase": "Failed",
            "reason": "Evicted",
            "message": "The node was low on resource: memory.",
        },
    }
    assert describe_failures([pod_view(pressure)]) == (
        "j-worker-3 (Evicted: The node was low on resource: memory.)"
    )


def test_a_pod_gone_from_the_gang_is_reported_with_what_is_known_of_it():
    assert gone("j-worker-1", 2, None).reason == "deleted"
    leaving = PodView("j-worker-1", "worker", 1, 2, "Running", deleting=True)
    assert gone("j-worker-1", 2, leaving).reason == "deleted"
    preempted = PodView("j-worker-1", "worker", 1, 2, "Running", True, "PreemptionByScheduler")
    assert gone("j-worker-1", 2, preempted) == preempted


def pending(name: str, status: dict) -> PodView:
    return pod_view({"metadata": {"name": name}, "status": {"phase": "Pending", **status}})


def test_why_pods_wait_is_the_most_telling_of_their_own_reasons() -> None:
    gated = pending(
        "j-worker-1-0",
        {"conditions": [{"type": "PodScheduled", "status": "False", "reason": "SchedulingGated"}]},
    )
    unschedulable = pending(
        "j-worker-0-0",
        {
            "conditions": [
                {
                    "type": "PodScheduled",
                    "status": "False",
                    "reason": "Unschedulable",
                    "message": "0/4 nodes are available: 4 Insufficient nvidia.com/gpu.",
                }
            ]
        },
    )
    pulling = pending(
        "j-coordinator-0",
        {
            "containerStatuses": [
                {
                    "state": {
                        "waiting": {
                            "reason": "ImagePullBackOff",
                            "message": 'Back-off pulling image "rlhf:typo"',
                        }
                    }
                }
            ]
        },
    )
    assert (unschedulable.waiting, gated.waiting, pulling.waiting) == (
        "Unschedulable",
        "SchedulingGated",
        "ImagePullBackOff",
    )
    assert why_waiting([gated, unschedulable, pulling]) == (
        "ImagePullBackOff",
        '1 pod(s) ImagePullBackOff: j-coordinator-0 (Back-off pulling image "rlhf:typo")',
        True,
    )
    assert why_waiting([gated, unschedulable])[0] == "Unschedulable"  # type: ignore[index]
    assert why_waiting([gated]) == (
        "SchedulingGated",
        "1 pod(s) SchedulingGated: j-worker-1-0",
        False,
    )
    assert why_waiting([running("j-worker-0-0")]) is None


def test_only_pods_bound_to_a_ready_node_hold_gpus() -> None:
    nodes = [NodeGPUs("up", 8), NodeGPUs("lost", 8, ready=False)]
    on_up = PodView("a", "worker", 0, 0, "Running", node_name="up", gpus=8)
    on_lost = PodView("b", "worker", 1, 0, "Running", deleting=True, node_name="lost", gpus=8)
    unbound = PodView("c", "worker", 2, 0, "Pending", gpus=8)
    finished = PodView("d", "worker", 3, 0, "Failed", node_name="up", gpus=8)
    coordinator = PodView("e", "coordinator", None, 0, "Running", node_name="up")
    assert holds_gpus([on_up, on_lost, unbound, finished, coordinator], nodes) == [on_up]
