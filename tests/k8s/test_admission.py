"""Admission: a job starts only when all the GPUs it needs are free. Pure."""

from __future__ import annotations

from typing import Any

from rlhf_operator.api.spec import Resources
from rlhf_operator.k8s.admission import (
    Admissions,
    GpuPod,
    QueueEntry,
    decide,
    free_gpus,
    gpu_pod,
    queue_entry,
)
from rlhf_operator.k8s.inventory import NodeGPUs

NODES = [NodeGPUs("a", 8), NodeGPUs("b", 8)]


def job(name: str, gpus: int = 8, created: str = "2026-01-01T00:00:00Z", **kw: Any) -> QueueEntry:
    resources = Resources(gpus=gpus, gpus_per_node=8, **kw.pop("resources", {}))
    per_node = min(8, gpus)
    return QueueEntry(
        "ns",
        name,
        created,
        kw.pop("priority_class", None),
        resources,
        gpus // per_node,
        per_node,
        admitted=kw.pop("admitted", False),
        waiting=kw.pop("waiting", False),
    )


def worker(name: str, job_name: str, node: str = "", gpus: int = 8) -> GpuPod:
    return GpuPod("ns", name, node, gpus, ("ns", job_name), worker=True)


def test_free_gpus_are_allocatable_less_what_bound_pods_request() -> None:
    other = GpuPod("team-b", "notebook", "a", 2)
    assert free_gpus(NODES, [other, worker("w", "x", "b", 8)]) == {"a": 6, "b": 0}


def test_a_job_starts_only_when_all_its_gpus_are_free() -> None:
    busy = [GpuPod("team-b", "notebook", "a", 2)]
    assert decide(job("one"), NODES, busy, [], {}).admit  # node b is whole
    two = decide(job("two", gpus=16), NODES, busy, [], {})
    assert not two.admit and two.reason == "WaitingForGPUs"
    assert (
        two.message
        == "needs 16 GPUs (2 pod(s) x 8); 14 free on 2 eligible node(s), 1 pod(s) would fit"
    )


def test_an_admitted_job_s_unbound_pods_keep_their_gpus() -> None:
    first = job("first", admitted=True)  # admitted, its pod not bound yet
    second = decide(job("second", created="2026-01-01T00:01:00Z"), NODES[:1], [], [first], {})
    assert not second.admit and second.free_gpus == 0
    # Once bound, its pod is counted where it runs, and only once.
    bound = [worker("first-worker-0-0", "first", "a")]
    assert not decide(job("second"), NODES[:1], bound, [first], {}).admit
    assert decide(job("second"), NODES, bound, [first], {}).admit  # b is free


def test_jobs_wait_in_priority_then_creation_order() -> None:
    older = job("older", created="2026-01-01T00:00:00Z", waiting=True)
    newer = job("newer", created="2026-01-01T00:05:00Z", waiting=True)
    urgent = job("urgent", created="2026-01-01T00:09:00Z", waiting=True, priority_class="high")
    queue = [older, newer, urgent]
    decision = decide(newer, NODES, [], queue, {})
    assert not decision.admit and decision.reason == "Queued"
    assert decision.message.startswith("queued behind 1 job(s) for the same nodes, first ns/older")
    assert decide(older, NODES, [], queue, {}).admit
    # A higher PriorityClass goes first, whatever its age.
    assert not decide(older, NODES, [], queue, {"high": 1000}).admit
    assert decide(urgent, NODES, [], queue, {"high": 1000}).admit
    # Jobs for other nodes do not wait for each other.
    nodes = [NodeGPUs("a", 8, labels={"pool": "main"}), NodeGPUs("x", 8, labels={"pool": "x"})]
    main = job("main", waiting=True, resources={"nodeSelector": {"pool": "main"}})
    elsewhere = job("x", created="2026-01-02T00:00:00Z", resources={"nodeSelector": {"pool": "x"}})
    assert decide(elsewhere, nodes, [], [main, elsewhere], {}).admit


def test_two_decisions_at_once_cannot_take_the_same_gpus() -> None:
    admissions = Admissions()
    first, second = job("first"), job("second", created="2026-01-01T00:01:00Z")
    # Neither is admitted in the index yet (the status patches are on their way).
    assert admissions.decide(first, NODES[:1], [], [first, second], {}).admit
    assert not admissions.decide(second, NODES[:1], [], [first, second], {}).admit
    # Finished, the first holds nothing any more.
    done = QueueEntry(**{**first.__dict__, "done": True})
    assert admissions.decide(second, NODES[:1], [], [done, second], {}).admit


def test_index_entries_from_objects() -> None:
    pod = {
        "metadata": {
            "namespace": "ns",
            "name": "j-worker-0-0",
            "labels": {
                "app.kubernetes.io/managed-by": "rlhf-operator",
                "rlhf.dev/job": "j",
                "rlhf.dev/component": "worker",
            },
        },
        "spec": {
            "nodeName": "a",
            "containers": [{"resources": {"limits": {"nvidia.com/gpu": "8"}}}],
        },
        "status": {"phase": "Running"},
    }
    assert gpu_pod(pod) == GpuPod("ns", "j-worker-0-0", "a", 8, ("ns", "j"), worker=True)
    assert gpu_pod({**pod, "status": {"phase": "Succeeded"}}) is None  # ended: GPUs free
    body = {
        "metadata": {"namespace": "ns", "name": "j", "creationTimestamp": "2026-01-01T00:00:00Z"},
        "spec": {"resources": {"gpus": 16, "gpusPerNode": 8}},
        "status": {"phase": "Queued"},
    }
    entry = queue_entry(body)
    assert entry is not None and (entry.pods, entry.per_node, entry.waiting) == (2, 8, True)
    kueue = {**body, "spec": {**body["spec"], "runPolicy": {"scheduling": {"queue": "q"}}}}
    assert queue_entry(kueue) is None  # Kueue admits it
    assert queue_entry({**body, "spec": {"resources": {"local": {"slots": 2}}}}) is None


def test_a_job_that_cannot_fit_the_cluster_at_all_holds_no_queue() -> None:
    big = job("big", gpus=32, waiting=True)  # 4 pods of 8; the nodes have 2
    decision = decide(big, NODES, [], [big], {})
    assert (decision.admit, decision.reason) == (False, "InsufficientGPUs")
    # Only nodes a waiting job could use are its: 8 per pod never fit a 4-GPU node.
    small_nodes = [NodeGPUs("s1", 4), NodeGPUs("s2", 4)]
    wide = job("wide", gpus=16, waiting=True)
    narrow = QueueEntry(
        "ns",
        "narrow",
        "2026-01-02T00:00:00Z",
        None,
        Resources(gpus=2, gpus_per_node=1),
        2,
        1,
        admitted=False,
        waiting=False,
    )
    assert decide(narrow, small_nodes, [], [wide, narrow], {}).admit


def test_an_admitted_job_s_unbound_pods_are_reserved_where_they_can_run() -> None:
    # The A100 node (the most free GPUs) is not the H100 job's: its pod is reserved on h100.
    nodes = [
        NodeGPUs("h100", 8, product="NVIDIA-H100-80GB-HBM3"),
        NodeGPUs("a100", 16, product="NVIDIA-A100-SXM4-80GB"),
    ]
    h100_only = job("h", admitted=True, resources={"gpuType": "H100"})
    other = job("other", created="2026-01-02T00:00:00Z", resources={"gpuType": "H100"})
    assert not decide(other, nodes, [], [h100_only, other], {}).admit


def test_a_denied_job_gives_back_what_the_ledger_held_for_it() -> None:
    admissions = Admissions()
    x = job("x", created="2026-01-01T00:00:00Z")
    assert admissions.decide(x, NODES[:1], [], [x], {}).admit  # its status patch is lost
    y = job("y", created="2026-01-01T00:05:00Z", waiting=True, priority_class="high")
    # x asks again (its status never said Admitted) and loses to y, which is ahead now...
    assert not admissions.decide(x, NODES[:1], [], [x, y], {"high": 10}).admit
    # ...and no longer holds the GPUs y needs.
    assert admissions.decide(y, NODES[:1], [], [x, y], {"high": 10}).admit
