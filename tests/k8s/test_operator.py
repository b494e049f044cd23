"""The real operator (kopf) against the emulator, with a fake kubelet."""

from __future__ import annotations

import time

import pytest
from prometheus_client import REGISTRY

from rlhf_operator.api import validate_object
from rlhf_operator.api.manifests import one_line
from rlhf_operator.controlplane import exits
from rlhf_operator.k8s.status import iso, now_utc

from .cluster import (
    NAMESPACE,
    Cluster,
    FakeKubelet,
    OperatorThread,
    config,
    event_named,
    wait_for,
)
from .conftest import gpu_job, local_job


def reconciles() -> float:
    """Reconciliations that finished (the operator's own metric, process-wide)."""
    return REGISTRY.get_sample_value("rlhf_operator_reconcile_total", {"result": "done"}) or 0.0


def restarts(cause: str) -> float:
    """Restarts by cause (the operator's own metric, process-wide)."""
    value = REGISTRY.get_sample_value("rlhf_operator_job_restarts_total", {"cause": cause})
    return value or 0.0


def phase(cluster: Cluster, name: str) -> str | None:
    return cluster.status(name).get("phase")


def running(cluster: Cluster, name: str) -> bool:
    return phase(cluster, name) == "Running"


def children(cluster: Cluster) -> list[dict]:
    paths = [
        f"/api/v1/namespaces/{NAMESPACE}/{p}"
        for p in ("pods", "configmaps", "secrets", "services", "serviceaccounts")
    ] + [
        f"/apis/rbac.authorization.k8s.io/v1/namespaces/{NAMESPACE}/{p}"
        for p in ("roles", "rolebindings")
    ]
    return [obj for path in paths for obj in cluster.items(path)]


def test_invalid_manifest_fails_with_the_validate_message_and_creates_nothing(
    cluster, operator, kubelet
):
    job = local_job("bad")
    job["spec"]["data"]["batchSize"] = 0
    job["spec"]["training"]["iterationz"] = 3
    cluster.apply_job(job)
    wait_for(lambda: phase(cluster, "bad") == "Failed", "the invalid job to fail")
    valid = cluster.condition("bad", "Valid")
    _, errors = validate_object(job | {"metadata": {"name": "bad", "namespace": NAMESPACE}})
    assert valid is not None and valid["status"] == "False" and valid["reason"] == "InvalidSpec"
    assert valid["message"] == one_line("; ".join(str(e) for e in errors))
    assert "spec.training.iterationz: unknown field" in valid["message"]
    assert "\n" not in valid["message"]
    warnings = [e for e in cluster.events() if e.get("reason") == "InvalidSpec"]
    assert warnings and warnings[0]["type"] == "Warning"
    assert children(cluster) == []


def test_not_enough_gpus_waits_with_a_condition_and_starts_when_a_node_is_added(
    cluster, operator, kubelet
):
    cluster.add_gpu_node("gpu-a", 1)
    cluster.add_gpu_node(
        "tainted", 8, spec={"taints": [{"key": "dedicated", "value": "x", "effect": "NoSchedule"}]}
    )
    cluster.add_gpu_node("other-type", 8, product="NVIDIA-A100-SXM4-80GB")
    cluster.apply_job(gpu_job("big", gpus=2, gpus_per_node=1))
    planned = wait_for(
        lambda: (
            (c := cluster.condition("big", "Planned")) and c["reason"] == "InsufficientGPUs" and c
        ),
        "the InsufficientGPUs condition",
    )
    assert planned["status"] == "False"
    assert "1 GPUs missing" in planned["message"]
    assert phase(cluster, "big") == "Pending"
    assert cluster.pods("big") == []
    event = wait_for(
        lambda: [e for e in cluster.events() if e.get("reason") == "InsufficientGPUs"],
        "the InsufficientGPUs event",
    )[0]
    assert event["type"] == "Warning" and "1 GPUs missing" in event["message"]

    cluster.add_gpu_node("gpu-b", 1)
    wait_for(lambda: running(cluster, "big"), "the job to run once a node is added")
    assert cluster.pod_names("big") == {"big-coordinator-0", "big-worker-0-0", "big-worker-1-0"}
    assert cluster.condition("big", "Planned")["status"] == "True"
    assert cluster.status("big")["gpus"] == 2


def test_children_carry_owner_references(cluster, operator, kubelet):
    cluster.apply_job(local_job("owned", slots=2))
    wait_for(lambda: running(cluster, "owned"), "the job to run")
    uid = cluster.job("owned")["metadata"]["uid"]
    objs = children(cluster)
    kinds = sorted({o.get("kind") or "" for o in objs})
    names = {o["metadata"]["name"] for o in objs}
    assert {
        "owned-config",
        "owned-token",
        "owned",
        "owned-coordinator",
        "owned-coordinator-0",
        "owned-worker-0-0",
    } <= names
    for obj in objs:
        refs = obj["metadata"].get("ownerReferences") or []
        assert [(r["kind"], r["name"], r["uid"], r["controller"]) for r in refs] == [
            ("RLHFJob", "owned", uid, True)
        ], (kinds, obj["metadata"]["name"])


def test_suspend_removes_pods_and_resume_recreates_them(cluster, operator, kubelet):
    cluster.apply_job(local_job("pause", slots=2))
    wait_for(lambda: running(cluster, "pause"), "the job to run")
    cluster.patch_job("pause", {"spec": {"suspend": True}})
    wait_for(lambda: phase(cluster, "pause") == "Suspended", "the job to be suspended")
    wait_for(lambda: cluster.pods("pause") == [], "the pods to be removed")
    assert cluster.condition("pause", "Suspended")["status"] == "True"
    # What the resume needs stays: plan, token, service.
    assert cluster.get(f"/api/v1/namespaces/{NAMESPACE}/configmaps/pause-config") is not None
    assert cluster.get(f"/api/v1/namespaces/{NAMESPACE}/secrets/pause-token") is not None

    cluster.patch_job("pause", {"spec": {"suspend": False}})
    wait_for(lambda: running(cluster, "pause"), "the job to run again")
    # The resume's pods are a new attempt: new names (the old ones may still be going).
    assert cluster.pod_names("pause") == {"pause-coordinator-1", "pause-worker-0-1"}
    suspended = cluster.condition("pause", "Suspended")
    assert suspended["status"] == "False" and suspended["reason"] == "Resumed"
    assert cluster.status("pause").get("restarts", 0) == 0


def test_a_failed_pod_restarts_all_pods_up_to_the_backoff_limit(cluster, operator, kubelet):
    job = local_job("flaky", slots=2)
    job["spec"]["runPolicy"] = {"backoffLimit": 2}
    cluster.apply_job(job)
    wait_for(lambda: running(cluster, "flaky"), "the job to run")
    for restart in (1, 2):
        before = {p["metadata"]["name"]: p["metadata"]["uid"] for p in cluster.pods("flaky")}
        cluster.set_pod_phase(f"flaky-worker-0-{restart - 1}", "Failed", exit_code=1)
        wait_for(
            lambda r=restart: (
                cluster.status("flaky").get("restarts") == r and running(cluster, "flaky")
            ),
            f"restart {restart}",
        )
        after = {p["metadata"]["name"]: p for p in cluster.pods("flaky")}
        # Every pod is new, not only the failed one, and named for its attempt.
        assert set(after) == {f"flaky-coordinator-{restart}", f"flaky-worker-0-{restart}"}
        assert not set(after) & set(before)
        for pod in after.values():
            assert pod["metadata"]["labels"]["rlhf.dev/attempt"] == str(restart)
    cluster.set_pod_phase("flaky-coordinator-2", "Failed", exit_code=1)
    wait_for(lambda: phase(cluster, "flaky") == "Failed", "the job to fail")
    failed = cluster.condition("flaky", "Failed")
    assert failed["reason"] == "BackoffLimitExceeded" and "flaky-coordinator-2" in failed["message"]
    assert cluster.status("flaky")["restarts"] == 2
    wait_for(lambda: cluster.pods("flaky") == [], "the pods to be removed")
    assert [e for e in cluster.events() if e.get("reason") == "PodFailed"]


def test_the_restart_names_the_failed_pod_before_those_that_lost_it(cluster, operator, kubelet):
    cluster.add_gpu_node("gpu-a", 1)
    cluster.add_gpu_node("gpu-b", 1)
    cluster.apply_job(gpu_job("gang", gpus=2, gpus_per_node=1))  # two worker pods
    wait_for(lambda: running(cluster, "gang"), "the job to run")
    # The bystanders are reported first, as they may be by independent kubelets.
    cluster.set_pod_phase("gang-worker-0-0", "Failed", exit_code=exits.PEER_LOST)
    cluster.set_pod_phase("gang-coordinator-0", "Failed", exit_code=exits.PEER_LOST)
    cluster.set_pod_phase("gang-worker-1-0", "Failed", exit_code=137)
    wait_for(lambda: cluster.status("gang").get("restarts") == 1, "the restart")
    event = event_named(cluster, "PodFailed")
    assert event["message"].startswith("gang-worker-1-0 (Error, exit code 137), gang-")


def test_an_eviction_restarts_the_gang_without_counting_against_backoff(cluster, operator, kubelet):
    job = local_job("evict", slots=2)
    job["spec"]["runPolicy"] = {"backoffLimit": 0}  # any counted failure would end it
    cluster.apply_job(job)
    wait_for(lambda: running(cluster, "evict"), "the job to run")
    # An eviction as the API server plays it: the condition, then the pod stays,
    # deleting, for its grace period (played by a finalizer: kmock drops an object
    # marked deleted that has none).
    pod = f"/api/v1/namespaces/{NAMESPACE}/pods/evict-worker-0-0"
    condition = {
        "type": "DisruptionTarget",
        "status": "True",
        "reason": "EvictionByEvictionAPI",
        "message": "Eviction API: evicting",
    }
    merge = "application/merge-patch+json"
    cluster.kube.call("PATCH", f"{pod}/status", {"status": {"conditions": [condition]}}, merge)
    deleting = {"deletionTimestamp": iso(now_utc()), "finalizers": ["test.rlhf.dev/grace"]}
    cluster.kube.call("PATCH", pod, {"metadata": deleting}, merge)
    wait_for(lambda: cluster.status("evict").get("restarts") == 1, "the restart")
    event = event_named(cluster, "PodDisrupted")
    assert event["message"] == (
        "evict-worker-0-0 (EvictionByEvictionAPI: Eviction API: evicting): restarting all pods "
        "from the last checkpoint (restart 1, a disruption, not counted against backoffLimit 0)"
    )
    assert cluster.status("evict")["disruptions"] == 1 and phase(cluster, "evict") != "Failed"
    assert cluster.condition("evict", "Running")["reason"] == "PodDisrupted"
    assert restarts("disruption") >= 1.0  # the operator's metric (process-wide)


def test_an_operator_restart_does_not_disturb_a_running_job(cluster, kubelet):
    first = OperatorThread(config(), cluster.kubeconfig).start()
    try:
        cluster.apply_job(local_job("steady", slots=2))
        wait_for(lambda: running(cluster, "steady"), "the job to run")
    finally:
        first.stop()
    pods = {p["metadata"]["name"]: p["metadata"]["uid"] for p in cluster.pods("steady")}
    version = cluster.job("steady")["metadata"]["resourceVersion"]
    served = len(cluster.emulator.requests())
    done = reconciles()

    second = OperatorThread(config(), cluster.kubeconfig).start()
    try:
        # Let the new operator resume the job and reconcile it several times.
        wait_for(lambda: reconciles() >= done + 5, "the new operator to reconcile the job")
        assert {p["metadata"]["name"]: p["metadata"]["uid"] for p in cluster.pods("steady")} == pods
        assert cluster.status("steady").get("restarts", 0) == 0
        assert running(cluster, "steady")
        writes = [
            r
            for r in cluster.emulator.requests()[served:]
            if r.method in ("POST", "DELETE") and "/pods" in str(r.url)
        ]
        assert writes == []
        assert cluster.job("steady")["metadata"]["resourceVersion"] >= version
        cluster.set_pod_phase("steady-coordinator-0", "Succeeded")
        wait_for(lambda: phase(cluster, "steady") == "Succeeded", "the job to succeed")
    finally:
        second.stop()


def test_coordinator_success_finishes_the_job_and_ttl_deletes_it(cluster, operator, kubelet):
    job = local_job("short", slots=2)
    job["spec"]["runPolicy"] = {"ttlSecondsAfterFinished": 0}
    cluster.apply_job(job)
    wait_for(lambda: running(cluster, "short"), "the job to run")
    cluster.set_pod_phase("short-coordinator-0", "Succeeded")
    wait_for(lambda: cluster.job("short") is None, "the finished job to be deleted (ttl 0)")


def test_active_deadline_fails_the_job(cluster, operator, kubelet):
    job = local_job("slow", slots=2)
    job["spec"]["runPolicy"] = {"activeDeadlineSeconds": 1}
    cluster.apply_job(job)
    wait_for(lambda: phase(cluster, "slow") == "Failed", "the deadline to pass")
    assert cluster.condition("slow", "Failed")["reason"] == "DeadlineExceeded"
    wait_for(lambda: cluster.pods("slow") == [], "the pods to be removed")


def test_volcano_gang_gets_a_pod_group(cluster, operator, kubelet):
    job = local_job("gang", slots=2)
    job["spec"]["runPolicy"] = {"scheduling": {"schedulerName": "volcano", "queue": "research"}}
    cluster.apply_job(job)
    wait_for(lambda: running(cluster, "gang"), "the job to run")
    group = cluster.get(
        f"/apis/scheduling.volcano.sh/v1beta1/namespaces/{NAMESPACE}/podgroups/gang"
    )
    assert group is not None
    assert group["spec"] == {"minMember": 2, "queue": "research"}  # coordinator + 1 worker pod
    for pod in cluster.pods("gang"):
        assert pod["spec"]["schedulerName"] == "volcano"
        assert pod["metadata"]["annotations"]["scheduling.k8s.io/group-name"] == "gang"


def test_a_namespaced_operator_handles_only_its_namespaces(cluster, kubelet):
    op = OperatorThread(config(namespaces=("team-a",)), cluster.kubeconfig).start()
    try:
        cluster.add_gpu_node("gpu-a", 2)
        cluster.apply_job(gpu_job("mine", gpus=2, gpus_per_node=2), namespace="team-a")
        cluster.apply_job(local_job("theirs"), namespace="default")
        wait_for(lambda: cluster.status("mine", "team-a").get("phase") == "Running", "mine to run")
        # Nodes are cluster-scoped: the GPU inventory works in a namespaced install too.
        assert cluster.status("mine", "team-a")["gpus"] == 2
        assert cluster.status("theirs") == {}
        assert cluster.pods("theirs") == []
    finally:
        op.stop()


def test_a_pod_stuck_terminating_on_a_lost_node_does_not_block_the_restart(
    cluster, operator, kubelet
):
    cluster.add_gpu_node("gpu-a", 1)
    cluster.add_gpu_node("gpu-b", 1)
    cluster.apply_job(gpu_job("lost", gpus=2, gpus_per_node=1))
    cluster.add_gpu_node("gpu-c", 1)  # a spare, where the lost node's replacement pod goes
    wait_for(lambda: running(cluster, "lost"), "the job to run")
    merge = "application/merge-patch+json"
    pods = f"/api/v1/namespaces/{NAMESPACE}/pods"
    for node, pod in (("gpu-a", "lost-worker-0-0"), ("gpu-b", "lost-worker-1-0")):
        cluster.kube.call("PATCH", f"{pods}/{pod}", {"spec": {"nodeName": node}}, merge)
    # gpu-b is lost: its Ready condition turns Unknown, the taint manager evicts its
    # pod, and with no kubelet to confirm, the pod stays Terminating for good.
    lost = {"status": {"conditions": [{"type": "Ready", "status": "Unknown"}]}}
    cluster.kube.call("PATCH", "/api/v1/nodes/gpu-b/status", lost, merge)
    condition = {"type": "DisruptionTarget", "status": "True", "reason": "DeletionByTaintManager"}
    cluster.kube.call(
        "PATCH", f"{pods}/lost-worker-1-0/status", {"status": {"conditions": [condition]}}, merge
    )
    deleting = {"deletionTimestamp": iso(now_utc()), "finalizers": ["test.rlhf.dev/stuck"]}
    cluster.kube.call("PATCH", f"{pods}/lost-worker-1-0", {"metadata": deleting}, merge)
    wait_for(lambda: cluster.status("lost").get("restarts") == 1, "the restart")
    # The restart's pods have new names and run beside the one still terminating.
    wait_for(
        lambda: (
            {"lost-coordinator-1", "lost-worker-0-1", "lost-worker-1-1"}
            <= cluster.pod_names("lost")
            and running(cluster, "lost")
        ),
        "the new pods to run",
    )
    assert "lost-worker-1-0" in cluster.pod_names("lost")  # still stuck
    assert cluster.status("lost")["disruptions"] == 1


def test_pods_that_wait_say_why_in_a_condition_and_an_event(cluster, operator, kubelet):
    kubelet.paused.set()  # nothing starts: the pods stay Pending
    cluster.apply_job(local_job("pull", slots=2))
    wait_for(lambda: len(cluster.pod_names("pull")) == 2, "the pods to be created")
    waiting = {
        "phase": "Pending",
        "containerStatuses": [
            {
                "name": "worker",
                "state": {
                    "waiting": {
                        "reason": "ImagePullBackOff",
                        "message": 'Back-off pulling image "rlhf-worker:typo"',
                    }
                },
            }
        ],
    }
    cluster.kube.call(
        "PATCH",
        f"/api/v1/namespaces/{NAMESPACE}/pods/pull-worker-0-0/status",
        {"status": waiting},
        "application/merge-patch+json",
    )
    ready = wait_for(
        lambda: (
            (c := cluster.condition("pull", "PodsReady"))
            and c["reason"] == "ImagePullBackOff"
            and c
        ),
        "the condition",
    )
    assert ready["message"] == (
        "2 of 2 pods not running yet: 1 pod(s) ImagePullBackOff: pull-worker-0-0 "
        '(Back-off pulling image "rlhf-worker:typo")'
    )
    event = wait_for(
        lambda: [e for e in cluster.events() if e.get("reason") == "ImagePullBackOff"],
        "the event",
    )[0]
    assert event["type"] == "Warning" and event["message"] == ready["message"]


def test_a_job_waits_queued_until_the_gpus_it_needs_are_free(cluster, operator, kubelet):
    cluster.add_gpu_node("gpu-a", 2)
    cluster.apply_job(gpu_job("first", gpus=2, gpus_per_node=2))
    wait_for(lambda: running(cluster, "first"), "the first job to run")
    cluster.apply_job(gpu_job("second", gpus=2, gpus_per_node=2))
    wait_for(lambda: phase(cluster, "second") == "Queued", "the second job to queue")
    admitted = cluster.condition("second", "Admitted")
    assert admitted["status"] == "False" and admitted["reason"] == "WaitingForGPUs"
    assert admitted["message"] == (
        "needs 2 GPUs (1 pod(s) x 2); 0 free on 1 eligible node(s), 0 pod(s) would fit"
    )
    assert cluster.pods("second") == []  # no partial start: no pod holds a GPU it waits for
    assert cluster.condition("first", "Admitted")["status"] == "True"

    cluster.set_pod_phase("first-coordinator-0", "Succeeded")
    wait_for(lambda: phase(cluster, "first") == "Succeeded", "the first job to finish")
    wait_for(lambda: running(cluster, "second"), "the second job to run on the freed GPUs")
    (worker,) = [p for p in cluster.pods("second") if p["metadata"]["name"] == "second-worker-0-0"]
    assert worker["spec"]["nodeName"] == "gpu-a"
    cluster.set_pod_phase("second-coordinator-0", "Succeeded")
    wait_for(lambda: phase(cluster, "second") == "Succeeded", "the second job to finish")
    assert [e["reason"] for e in cluster.events() if e["involvedObject"]["name"] == "second"][
        :2
    ] == ["Planned", "WaitingForGPUs"]


def test_a_spec_edit_an_older_crd_let_through_is_refused_with_a_condition(
    cluster, operator, kubelet
):
    cluster.apply_job(local_job("edit", slots=2))
    wait_for(lambda: running(cluster, "edit"), "the job to run")
    pods = {p["metadata"]["name"]: p["metadata"]["uid"] for p in cluster.pods("edit")}
    accepted = cluster.status("edit")["observedGeneration"]
    # The emulator has no CEL: the edits reach the operator, as with an older CRD.
    cluster.patch_job(
        "edit",
        {
            "spec": {
                "training": {"iterations": 999},
                "resources": {"local": {"slots": 4}},  # would restart with a new WORLD_SIZE
                "runPolicy": {"backoffLimit": 7},  # meant to change
            }
        },
    )
    refused = wait_for(lambda: cluster.condition("edit", "SpecAccepted"), "the refusal")
    assert refused["status"] == "False" and refused["reason"] == "ImmutableFieldChanged"
    assert refused["message"].startswith(
        "spec.training, spec.resources changed after the job was planned: refused"
    )
    assert cluster.status("edit")["observedGeneration"] == accepted
    event = event_named(cluster, "ImmutableFieldChanged")
    assert event["type"] == "Warning"
    for _ in range(5):  # the job goes on as planned: same pods, no restart
        assert {p["metadata"]["name"]: p["metadata"]["uid"] for p in cluster.pods("edit")} == pods
        assert running(cluster, "edit") and cluster.status("edit").get("restarts", 0) == 0
        time.sleep(0.3)
    # Undone, the spec is accepted again, with the change meant to be made.
    cluster.patch_job(
        "edit", {"spec": {"training": {"iterations": 30}, "resources": {"local": {"slots": 2}}}}
    )
    wait_for(lambda: cluster.condition("edit", "SpecAccepted")["status"] == "True", "the revert")
    assert (
        cluster.status("edit")["observedGeneration"]
        == cluster.job("edit")["metadata"]["generation"]
    )


@pytest.fixture()
def kueue(cluster):
    k = FakeKubelet(cluster, kueue=True).start()
    yield k
    k.stop()


def test_kueue_admits_the_pod_group_and_a_preemption_requeues_it_without_a_failure(
    cluster, operator, kueue
):
    job = local_job("q", slots=2)
    job["spec"]["runPolicy"] = {"backoffLimit": 0, "scheduling": {"queue": "team-a"}}
    cluster.apply_job(job)
    wait_for(lambda: phase(cluster, "q") == "Queued", "the job to wait for Kueue")
    admitted = cluster.condition("q", "Admitted")
    assert (admitted["status"], admitted["reason"]) == ("False", "WaitingForKueue")
    assert admitted["message"] == (
        "waiting for Kueue to admit the pod group (LocalQueue team-a): 2 of 2 pod(s) gated"
    )
    pods = cluster.pods("q")
    assert {p["metadata"]["labels"]["kueue.x-k8s.io/pod-group-name"] for p in pods} == {"q-0"}
    assert all("schedulingGates" not in p["spec"] for p in pods)  # Kueue's webhook gates them
    kueue.admit("q-0")
    wait_for(lambda: running(cluster, "q"), "the job to run once admitted")
    assert cluster.condition("q", "Admitted")["reason"] == "AdmittedByKueue"

    kueue.preempt("q-0")
    wait_for(lambda: cluster.status("q").get("restarts") == 1, "the requeue")
    wait_for(lambda: phase(cluster, "q") == "Queued", "the replacement pods to wait for Kueue")
    status = cluster.status("q")
    assert status["disruptions"] == 1 and status["phase"] != "Failed"  # backoffLimit 0
    event = event_named(cluster, "PodDisrupted")
    assert "(Preempted: Preempted to accommodate a workload of higher priority)" in event["message"]
    # Replacement pods of the same group: Kueue gives the group its quota back.
    assert {
        p["metadata"]["labels"]["kueue.x-k8s.io/pod-group-name"] for p in cluster.pods("q")
    } == {"q-0"}
    kueue.admit("q-0")
    wait_for(lambda: running(cluster, "q"), "the job to run again")

    # Done: every pod is marked not retriable, so Kueue finishes the Workload.
    cluster.set_pod_phase("q-coordinator-1", "Succeeded")
    wait_for(lambda: phase(cluster, "q") == "Succeeded", "the job to finish")

    def finished_group() -> bool:
        pods = cluster.pods("q")
        return bool(pods) and all(
            p["metadata"]["annotations"].get("kueue.x-k8s.io/retriable-in-group") == "false"
            and p["status"]["phase"] in ("Succeeded", "Failed")
            for p in pods
        )

    # What is left of the group (the coordinator's Succeeded pod; the worker's went
    # once Kueue let it) is marked not retriable: Kueue finishes the Workload.
    wait_for(finished_group, "the group to be marked finished")
    assert [p["metadata"]["name"] for p in cluster.pods("q")] == ["q-coordinator-1"]


def test_a_suspended_kueue_job_releases_its_group_and_resumes_in_a_new_one(
    cluster, operator, kueue
):
    job = local_job("qs", slots=2)
    job["spec"]["runPolicy"] = {"scheduling": {"queue": "team-a"}}
    cluster.apply_job(job)
    wait_for(lambda: phase(cluster, "qs") == "Queued", "the job to wait for Kueue")
    kueue.admit("qs-0")
    wait_for(lambda: running(cluster, "qs"), "the job to run")
    cluster.patch_job("qs", {"spec": {"suspend": True}})
    # The pods linger (Kueue's finalizer) until their group is finished: marked first.
    wait_for(lambda: cluster.pods("qs") == [], "the suspended group's pods to go")
    cluster.patch_job("qs", {"spec": {"suspend": False}})
    wait_for(lambda: cluster.status("qs").get("podGroup") == "qs-1", "a new pod group")
    wait_for(lambda: phase(cluster, "qs") == "Queued", "the new group to wait for Kueue")
    kueue.admit("qs-1")
    wait_for(lambda: running(cluster, "qs"), "the job to run again")


def test_a_pod_template_the_policy_refuses_fails_the_job_and_creates_nothing(
    cluster, operator, kubelet
):
    job = local_job("escalate", slots=2)
    job["spec"]["resources"]["podTemplate"] = {
        "spec": {"hostPID": True, "volumes": [{"name": "root", "hostPath": {"path": "/"}}]}
    }
    cluster.apply_job(job)
    wait_for(lambda: phase(cluster, "escalate") == "Failed", "the job to fail")
    valid = cluster.condition("escalate", "Valid")
    assert valid["status"] == "False" and valid["reason"] == "InvalidSpec"
    assert valid["message"] == (
        "spec.resources.podTemplate.spec.hostPID: hostPID is refused by the operator's pod "
        "policy (allowed by podPolicy.allowHostNamespaces); "
        "spec.resources.podTemplate.spec.volumes[0].hostPath: a hostPath volume is refused by "
        "the operator's pod policy (allowed by podPolicy.allowHostPath)"
    )
    assert cluster.pods("escalate") == []
    assert cluster.get(f"/api/v1/namespaces/{NAMESPACE}/configmaps/escalate-config") is None


def test_uninstall_in_the_documented_order_leaves_nothing_stuck(cluster, kubelet):
    op = OperatorThread(config(), cluster.kubeconfig).start()
    try:
        cluster.apply_job(local_job("first", slots=2))
        cluster.apply_job(local_job("second", slots=2))
        wait_for(lambda: running(cluster, "first") and running(cluster, "second"), "both to run")
        # 1. Jobs are deleted while the operator runs: it removes its finalizer.
        jobs = f"/apis/rlhf.dev/v1alpha1/namespaces/{NAMESPACE}/rlhfjobs"
        cluster.kube.call("DELETE", f"{jobs}/first")
        wait_for(lambda: cluster.job("first") is None, "the job to go")
    finally:
        op.stop()  # 2. helm uninstall
    # Deleted after the operator went: its finalizer holds it; the README's patch frees it.
    assert (cluster.job("second") or {})["metadata"]["finalizers"] == ["rlhf.dev/finalizer"]
    cluster.kube.call("DELETE", f"{jobs}/second")
    assert cluster.job("second")["metadata"].get("deletionTimestamp")
    cluster.patch_job("second", {"metadata": {"finalizers": None}})
    wait_for(lambda: cluster.job("second") is None, "the stuck job to go")
