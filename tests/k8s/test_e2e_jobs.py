"""End to end through Kubernetes: the real operator against the emulator, and
every pod it creates run as local processes by the pod executor (the
coordinator pod runs `python -m rlhf_operator.coordinator`, the worker pod its
launcher, `python -m rlhf_worker.launcher`, which runs one `python -m rlhf_worker`
per CPU slot).
"""

from __future__ import annotations

import re
import shlex
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from rlhf_operator.k8s.status import iso, now_utc

from .cluster import NAMESPACE, Cluster, OperatorThread, config, event_named, wait_for
from .conftest import ROOT, example
from .executor import PodExecutor

TRAINING_TIMEOUT = 540.0  # a hang guard for CPU training, not a speed assertion


@pytest.fixture()
def executor(cluster: Cluster, tmp_path: Path) -> Iterator[PodExecutor]:
    # Relative prompt paths in the examples resolve against examples/.
    ex = PodExecutor(cluster, tmp_path / "pods", ROOT / "examples").start()
    yield ex
    ex.stop()


def tiny(name: str, iterations: int = 4, interval: int = 2) -> dict[str, Any]:
    job = example("tiny-ppo.yaml")
    job["metadata"] = {"name": name}
    job["spec"]["training"]["iterations"] = iterations
    job["spec"]["checkpoint"] = {"interval": interval}
    # An absolute path: the manifest reaches the coordinator through the ConfigMap,
    # away from the example's directory.
    job["spec"]["data"]["prompts"]["path"] = str(ROOT / "examples" / "data" / "prompts.jsonl")
    return job


def phase(cluster: Cluster, name: str) -> str | None:
    return cluster.status(name).get("phase")


def diagnose(cluster: Cluster, executor: PodExecutor, name: str) -> str:
    logs = "\n".join(
        f"--- {p}\n{executor.log_of(p)[-3000:]}" for p in sorted(cluster.pod_names(name))
    )
    return f"status: {cluster.status(name)}\n{logs}"


def finished(cluster: Cluster, executor: PodExecutor, name: str) -> dict[str, Any]:
    wait_for(
        lambda: phase(cluster, name) in ("Succeeded", "Failed"),
        f"{name} to finish",
        TRAINING_TIMEOUT,
    )
    status = cluster.status(name)
    assert status["phase"] == "Succeeded", diagnose(cluster, executor, name)
    return status


def test_tiny_job_goes_from_apply_to_succeeded(cluster, operator, executor):
    cluster.apply_job(tiny("tiny", iterations=4))
    status = finished(cluster, executor, "tiny")
    assert status["iteration"] == 4
    assert isinstance(status["metrics"]["rewardMean"], float)
    assert status["lastCheckpoint"]["iteration"] == 4
    assert status.get("restarts", 0) == 0


def test_a_killed_worker_restarts_the_job_from_its_checkpoint(cluster, operator, executor):
    cluster.apply_job(tiny("crash", iterations=6, interval=2))
    wait_for(
        lambda: (cluster.status("crash").get("lastCheckpoint") or {}).get("iteration", 0) >= 2,
        "a first checkpoint",
        TRAINING_TIMEOUT,
    )
    # One rank of the worker pod dies: its launcher stops the other and fails the pod
    # with that rank's reason; the restart's pods have new names.
    executor.kill_rank("crash-worker-0-0", 1)
    wait_for(lambda: cluster.status("crash").get("restarts") == 1, "the restart")
    status = finished(cluster, executor, "crash")
    assert status["iteration"] == 6 and status["restarts"] == 1
    assert status["lastCheckpoint"]["iteration"] == 6
    reason = event_named(cluster, "PodFailed")["message"]
    assert reason.startswith(
        "crash-worker-0-0 (Error, exit code 137: rlhf-launcher: rank 1: killed by SIGKILL"
    ), reason


def test_a_worker_that_cannot_start_fails_the_job_with_its_reason(cluster, executor):
    # The reason outlives the pods (deleted with the failure): it is in the condition.
    handlers = {"RLHF_WORKER_HANDLERS": "no_such_handlers"}
    op = OperatorThread(config(extra_worker_env=handlers), cluster.kubeconfig).start()
    try:
        job = tiny("nohandlers")
        job["spec"]["runPolicy"] = {"backoffLimit": 0}
        cluster.apply_job(job)
        wait_for(lambda: phase(cluster, "nohandlers") == "Failed", "the job to fail")
        failed = cluster.condition("nohandlers", "Failed")
        assert failed["reason"] == "BackoffLimitExceeded"
        # Either rank may be the first to fail (and the other miss the settle time).
        # Either rank may be the first to fail: the launcher reports that one.
        assert re.search(
            r"nohandlers-worker-0-0 \(Error, exit code 2: rlhf-launcher: rank \d: rlhf-worker: ",
            failed["message"],
        ), failed["message"]
        assert "cannot import 'no_such_handlers'" in failed["message"]
    finally:
        op.stop()


def test_a_worker_that_crashes_leaves_the_end_of_its_log(cluster, operator, tmp_path):
    # No reason left (an uncaught exception): the kubelet falls back to the log,
    # whose last line is the exception.
    crash = [
        sys.executable,
        "-c",
        "raise RuntimeError('boom in rank ' + __import__('os').environ['RANK'])",
    ]
    ex = PodExecutor(
        cluster,
        tmp_path / "pods",
        ROOT / "examples",
        extra_env={"RLHF_WORKER_COMMAND": shlex.join(crash)},
    ).start()
    try:
        job = tiny("boom")
        job["spec"]["runPolicy"] = {"backoffLimit": 0}
        cluster.apply_job(job)
        wait_for(lambda: phase(cluster, "boom") == "Failed", "the job to fail")
        message = cluster.condition("boom", "Failed")["message"]
        assert re.search(
            r"boom-worker-0-0 \(Error, exit code 1: rlhf-launcher: rank (\d): "
            r"RuntimeError: boom in rank \1\)",
            message,
        ), message
    finally:
        ex.stop()


def test_suspend_and_resume_continue_from_the_checkpoint(cluster, operator, executor):
    cluster.apply_job(tiny("pause", iterations=6, interval=2))
    wait_for(
        lambda: (cluster.status("pause").get("lastCheckpoint") or {}).get("iteration", 0) >= 2,
        "a first checkpoint",
        TRAINING_TIMEOUT,
    )
    processes = [executor.pods[(NAMESPACE, n)].process for n in cluster.pod_names("pause")]
    cluster.patch_job("pause", {"spec": {"suspend": True}})
    wait_for(lambda: cluster.pods("pause") == [], "the pods to be removed")
    wait_for(lambda: all(p.poll() is not None for p in processes), "the processes to stop")
    cluster.patch_job("pause", {"spec": {"suspend": False}})
    status = finished(cluster, executor, "pause")
    assert status["iteration"] == 6


def test_an_operator_restart_mid_job_leaves_it_running_to_completion(cluster, executor):
    first = OperatorThread(config(), cluster.kubeconfig).start()
    try:
        cluster.apply_job(tiny("steady", iterations=6))
        wait_for(
            lambda: (cluster.status("steady").get("iteration") or 0) >= 1,
            "the first iteration",
            TRAINING_TIMEOUT,
        )
    finally:
        first.stop()
    pods = {p["metadata"]["name"]: p["metadata"]["uid"] for p in cluster.pods("steady")}
    second = OperatorThread(config(), cluster.kubeconfig).start()
    try:
        status = finished(cluster, executor, "steady")
        assert status.get("restarts", 0) == 0
        assert status["iteration"] == 6
        still = {p["metadata"]["name"]: p["metadata"]["uid"] for p in cluster.pods("steady")}
        assert {n: u for n, u in still.items() if n in pods} == {
            n: u for n, u in pods.items() if n in still
        }
    finally:
        second.stop()


def test_a_kueue_preemption_requeues_the_job_which_resumes_from_its_checkpoint(
    cluster, operator, executor
):
    job = tiny("preempted", iterations=6, interval=2)
    job["spec"]["runPolicy"] = {"backoffLimit": 0, "scheduling": {"queue": "team-a"}}
    cluster.apply_job(job)
    wait_for(
        lambda: (cluster.status("preempted").get("lastCheckpoint") or {}).get("iteration", 0) >= 2,
        "a first checkpoint",
        TRAINING_TIMEOUT,
    )
    # Kueue preempts the group: each pod marked TerminationTarget, then deleted; Kueue's
    # finalizer keeps it, Terminating, while its processes are stopped.
    merge = "application/merge-patch+json"
    pods = f"/api/v1/namespaces/{NAMESPACE}/pods"
    condition = {"type": "TerminationTarget", "status": "True", "reason": "Preempted"}
    for name in cluster.pod_names("preempted"):
        status = {"status": {"conditions": [condition]}}
        cluster.kube.call("PATCH", f"{pods}/{name}/status", status, merge)
        deleting = {"deletionTimestamp": iso(now_utc()), "finalizers": ["kueue.x-k8s.io/managed"]}
        cluster.kube.call("PATCH", f"{pods}/{name}", {"metadata": deleting}, merge)
    wait_for(lambda: cluster.status("preempted").get("restarts") == 1, "the requeue")
    status = finished(cluster, executor, "preempted")
    # backoffLimit 0, and yet it finished: the preemption counted as a disruption only.
    assert status["iteration"] == 6 and status["disruptions"] == 1
    log = executor.log_of("preempted-coordinator-1")
    assert re.search(r"starting at iteration ([3-9]) \(resumed\)", log), log[-2000:]
