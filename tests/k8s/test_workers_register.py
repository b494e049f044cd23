"""The pods the operator builds, run as processes: the real worker processes
(`python -m rlhf_worker`, from each worker pod's command and environment)
register with a coordinator over the pods' DNS names and ports, with the token
from the job's Secret; the coordinator's status report reaches the RLHFJob and
the job ends Succeeded. The coordinator is a stand-in that only checks the
workers in (tests/k8s/standin_coordinator.py) until the real one exists."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from .cluster import wait_for
from .conftest import ROOT, local_job
from .executor import PodExecutor

pytest.importorskip("torch")  # the worker process imports it

HERE = Path(__file__).resolve().parent


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


def test_worker_pods_register_with_the_coordinator_pod(cluster, operator, executor):
    cluster.apply_job(local_job("hello", slots=3))
    wait_for(
        lambda: cluster.status("hello").get("phase") in ("Succeeded", "Failed"),
        "the job to finish",
        timeout=300,
    )
    status = cluster.status("hello")
    logs = {p: executor.log_of(p) for p in sorted(cluster.pod_names("hello"))}
    assert status["phase"] == "Succeeded", (status, logs)
    assert "registered ranks: [0, 1, 2]" in logs["hello-coordinator"]
    assert status["iteration"] == 1 and status["metrics"]["rewardMean"] == 0.25
    # Workers exit 0 after the coordinator's Shutdown (any still running when the
    # job finished were removed by the operator).
    phases = {p["metadata"]["name"]: p["status"]["phase"] for p in cluster.pods("hello")}
    assert phases["hello-coordinator"] == "Succeeded"
    assert set(phases.values()) == {"Succeeded"}, phases
