"""The pods the operator builds, run as processes: the real worker processes
(`python -m rlhf_worker`, from each worker pod's command and environment)
register with a coordinator over the pods' DNS names and ports, with the token
from the job's Secret; the coordinator's status report reaches the RLHFJob.
The coordinator is a stand-in that checks the workers in and waits for a
`finish` file (tests/k8s/standin_coordinator.py) until the real one exists:
with it, failures, suspend/resume and operator restarts run with real
processes, real exits and real kills."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from .cluster import NAMESPACE, Cluster, OperatorThread, config, wait_for
from .conftest import ROOT, local_job
from .executor import PodExecutor

pytest.importorskip("torch")  # the worker process imports it

HERE = Path(__file__).resolve().parent
PROCESS_TIMEOUT = 300.0  # hang guard: worker processes import torch on a busy machine


@pytest.fixture()
def executor(cluster, tmp_path):
    ex = PodExecutor(
        cluster,
        tmp_path / "pods",
        ROOT,
        replace_modules={
            "rlhf_operator.coordinator": [sys.executable, str(HERE / "standin_coordinator.py")]
        },
    ).start()
    yield ex
    ex.stop()


def registered(executor: PodExecutor, job: str, ranks: int) -> bool:
    expected = f"registered ranks: {list(range(ranks))}"
    return expected in executor.log_of(f"{job}-coordinator")


def finish(executor: PodExecutor, job: str) -> None:
    """Let the stand-in coordinator end the job (its output dir, as the executor maps it)."""
    out = executor.root / NAMESPACE / f"job-{job}" / "fs" / "var" / "lib" / "rlhf"
    out.mkdir(parents=True, exist_ok=True)
    (out / "finish").touch()


def succeeded(cluster: Cluster, executor: PodExecutor, job: str) -> dict:
    wait_for(
        lambda: cluster.status(job).get("phase") in ("Succeeded", "Failed"),
        f"{job} to finish",
        PROCESS_TIMEOUT,
    )
    status = cluster.status(job)
    logs = {p: executor.log_of(p)[-2000:] for p in sorted(cluster.pod_names(job))}
    assert status["phase"] == "Succeeded", (status, logs)
    return status


def test_worker_pods_register_with_the_coordinator_pod(cluster, operator, executor):
    cluster.apply_job(local_job("hello", slots=3))
    wait_for(lambda: registered(executor, "hello", 3), "the workers to register", PROCESS_TIMEOUT)
    finish(executor, "hello")
    status = succeeded(cluster, executor, "hello")
    assert status["iteration"] == 1 and status["metrics"]["rewardMean"] == 0.25
    # Workers exit 0 after the coordinator's Shutdown (any still running when the
    # job finished were removed by the operator).
    phases = {p["metadata"]["name"]: p["status"]["phase"] for p in cluster.pods("hello")}
    assert phases["hello-coordinator"] == "Succeeded"
    assert set(phases.values()) == {"Succeeded"}, phases


@pytest.mark.slow  # minutes on 2 cores: workers import torch at every start
def test_a_killed_worker_process_restarts_every_pod(cluster, operator, executor):
    cluster.apply_job(local_job("crash", slots=2))
    wait_for(lambda: registered(executor, "crash", 2), "the workers to register", PROCESS_TIMEOUT)
    first = {p["metadata"]["name"]: p["metadata"]["uid"] for p in cluster.pods("crash")}
    executor.kill("crash-worker-1")
    wait_for(lambda: cluster.status("crash").get("restarts") == 1, "the restart", PROCESS_TIMEOUT)
    wait_for(
        lambda: (
            {p["metadata"]["name"] for p in cluster.pods("crash")} == set(first)
            and all(
                p["metadata"]["uid"] != first[p["metadata"]["name"]] for p in cluster.pods("crash")
            )
        ),
        "every pod to be recreated",
        PROCESS_TIMEOUT,
    )
    wait_for(
        lambda: registered(executor, "crash", 2), "the new workers to register", PROCESS_TIMEOUT
    )
    finish(executor, "crash")
    status = succeeded(cluster, executor, "crash")
    assert status["restarts"] == 1
    reason = next(e for e in cluster.events() if e.get("reason") == "PodFailed")["message"]
    assert "crash-worker-1" in reason and "exit code" in reason


@pytest.mark.slow  # minutes on 2 cores: workers import torch at every start
def test_suspend_and_resume_with_processes(cluster, operator, executor):
    cluster.apply_job(local_job("pause", slots=2))
    wait_for(lambda: registered(executor, "pause", 2), "the workers to register", PROCESS_TIMEOUT)
    processes = [executor.pods[(NAMESPACE, n)].process for n in cluster.pod_names("pause")]
    cluster.patch_job("pause", {"spec": {"suspend": True}})
    wait_for(lambda: cluster.pods("pause") == [], "the pods to be removed")
    wait_for(lambda: all(p.poll() is not None for p in processes), "the processes to stop")
    cluster.patch_job("pause", {"spec": {"suspend": False}})
    wait_for(
        lambda: registered(executor, "pause", 2), "the workers to register again", PROCESS_TIMEOUT
    )
    finish(executor, "pause")
    status = succeeded(cluster, executor, "pause")
    assert status.get("restarts", 0) == 0


@pytest.mark.slow  # minutes on 2 cores: workers import torch at every start
def test_an_operator_restart_leaves_running_processes_alone(cluster, executor):
    first = OperatorThread(config(), cluster.kubeconfig).start()
    try:
        cluster.apply_job(local_job("steady", slots=2))
        wait_for(
            lambda: registered(executor, "steady", 2), "the workers to register", PROCESS_TIMEOUT
        )
    finally:
        first.stop()
    processes = {n: executor.pods[(NAMESPACE, n)].process for n in cluster.pod_names("steady")}
    second = OperatorThread(config(), cluster.kubeconfig).start()
    try:
        finish(executor, "steady")
        status = succeeded(cluster, executor, "steady")
        assert status.get("restarts", 0) == 0
        # The very processes started under the first operator finished the job.
        assert processes["steady-coordinator"].returncode == 0
    finally:
        second.stop()
