"""The pods the operator builds, run as processes: the real worker processes
(`python -m rlhf_worker`, started by each worker pod's launcher from its
command and environment: one pod of three CPU slots here)
register with a coordinator over the pods' DNS names and ports, with the token
from the job's Secret; the coordinator's status report reaches the RLHFJob.
The coordinator is a stand-in that checks the workers in and waits for a
`finish` file (tests/k8s/standin_coordinator.py): it isolates registration
(DNS names, ports, token) from training. Failures, suspend/resume and operator
restarts run with the real coordinator in test_e2e_jobs.py."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from .cluster import NAMESPACE, Cluster, wait_for
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
    return expected in executor.log_of(f"{job}-coordinator-0")


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
    assert phases["hello-coordinator-0"] == "Succeeded"
    assert set(phases) == {"hello-coordinator-0", "hello-worker-0-0"}  # one pod, three ranks
    assert set(phases.values()) == {"Succeeded"}, phases
