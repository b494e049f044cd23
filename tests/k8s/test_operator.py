"""The real operator (kopf) against the emulator, with a fake kubelet."""

from __future__ import annotations

from prometheus_client import REGISTRY

from rlhf_operator.api import validate_object
from rlhf_operator.api.manifests import one_line
from rlhf_operator.controlplane import exits
from rlhf_operator.k8s.status import iso, now_utc

from .cluster import NAMESPACE, Cluster, OperatorThread, config, wait_for
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
    assert cluster.pod_names("big") == {"big-coordinator", "big-worker-0", "big-worker-1"}
    assert cluster.condition("big", "Planned")["status"] == "True"
    assert cluster.status("big")["gpus"] == 2


def test_children_carry_owner_references(cluster, operator, kubelet):
    cluster.apply_job(local_job("owned", slots=2))
    wait_for(lambda: running(cluster, "owned"), "the job to run")
    uid = cluster.job("owned")["metadata"]["uid"]
    objs = children(cluster)
    kinds = sorted({o.get("kind") or "" for o in objs})
    names = {o["metadata"]["name"] for o in objs}
    assert {"owned-config", "owned-token", "owned", "owned-coordinator", "owned-worker-0"} <= names
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
    assert cluster.pod_names("pause") == {"pause-coordinator", "pause-worker-0", "pause-worker-1"}
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
        cluster.set_pod_phase("flaky-worker-1", "Failed", exit_code=1)
        wait_for(
            lambda r=restart: (
                cluster.status("flaky").get("restarts") == r and running(cluster, "flaky")
            ),
            f"restart {restart}",
        )
        after = {p["metadata"]["name"]: p for p in cluster.pods("flaky")}
        assert set(after) == set(before)
        for name, pod in after.items():  # every pod is new, not only the failed one
            assert pod["metadata"]["uid"] != before[name]
            assert pod["metadata"]["labels"]["rlhf.dev/attempt"] == str(restart)
    cluster.set_pod_phase("flaky-coordinator", "Failed", exit_code=1)
    wait_for(lambda: phase(cluster, "flaky") == "Failed", "the job to fail")
    failed = cluster.condition("flaky", "Failed")
    assert failed["reason"] == "BackoffLimitExceeded" and "flaky-coordinator" in failed["message"]
    assert cluster.status("flaky")["restarts"] == 2
    wait_for(lambda: cluster.pods("flaky") == [], "the pods to be removed")
    assert [e for e in cluster.events() if e.get("reason") == "PodFailed"]


def test_the_restart_names_the_failed_pod_before_those_that_lost_it(cluster, operator, kubelet):
    cluster.apply_job(local_job("gang", slots=2))
    wait_for(lambda: running(cluster, "gang"), "the job to run")
    # The bystanders are reported first, as they may be by independent kubelets.
    cluster.set_pod_phase("gang-worker-0", "Failed", exit_code=exits.PEER_LOST)
    cluster.set_pod_phase("gang-coordinator", "Failed", exit_code=exits.PEER_LOST)
    cluster.set_pod_phase("gang-worker-1", "Failed", exit_code=137)
    wait_for(lambda: cluster.status("gang").get("restarts") == 1, "the restart")
    event = next(e for e in cluster.events() if e.get("reason") == "PodFailed")
    assert event["message"].startswith("gang-worker-1 (Error, exit code 137), gang-")


def test_an_eviction_restarts_the_gang_without_counting_against_backoff(cluster, operator, kubelet):
    job = local_job("evict", slots=2)
    job["spec"]["runPolicy"] = {"backoffLimit": 0}  # any counted failure would end it
    cluster.apply_job(job)
    wait_for(lambda: running(cluster, "evict"), "the job to run")
    # An eviction as the API server plays it: the condition, then the pod stays,
    # deleting, for its grace period (played by a finalizer: kmock drops an object
    # marked deleted that has none).
    pod = f"/api/v1/namespaces/{NAMESPACE}/pods/evict-worker-1"
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
    event = next(e for e in cluster.events() if e.get("reason") == "PodDisrupted")
    assert event["message"] == (
        "evict-worker-1 (EvictionByEvictionAPI: Eviction API: evicting): restarting all pods "
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
        cluster.set_pod_phase("steady-coordinator", "Succeeded")
        wait_for(lambda: phase(cluster, "steady") == "Succeeded", "the job to succeed")
    finally:
        second.stop()


def test_coordinator_success_finishes_the_job_and_ttl_deletes_it(cluster, operator, kubelet):
    job = local_job("short", slots=2)
    job["spec"]["runPolicy"] = {"ttlSecondsAfterFinished": 0}
    cluster.apply_job(job)
    wait_for(lambda: running(cluster, "short"), "the job to run")
    cluster.set_pod_phase("short-coordinator", "Succeeded")
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
    assert group["spec"] == {"minMember": 3, "queue": "research"}
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
