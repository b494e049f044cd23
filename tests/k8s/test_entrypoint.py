"""`python -m rlhf_operator` as its own process: it reconciles jobs in the
emulator, serves Prometheus metrics on /metrics and liveness on /healthz."""

from __future__ import annotations

import os
import subprocess
import sys
import urllib.request

from rlhf_operator import metrics_names

from .cluster import wait_for
from .conftest import local_job
from .executor import free_port


def fetch(url: str) -> str | None:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.read().decode()
    except OSError:
        return None


def test_python_m_rlhf_operator_runs_the_operator_with_metrics(cluster, kubelet, tmp_path):
    metrics_port, health_port = free_port(), free_port()
    env = {**os.environ, "RLHF_OPERATOR_RESYNC_SECONDS": "0.5", "RLHF_OPERATOR_RETRY_SECONDS": "1"}
    log = (tmp_path / "operator.log").open("w")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "rlhf_operator",
            "--kubeconfig",
            str(cluster.kubeconfig),
            "--metrics-port",
            str(metrics_port),
            "--health-port",
            str(health_port),
        ],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        cluster.apply_job(local_job("cli", slots=2))
        wait_for(lambda: cluster.status("cli").get("phase") == "Running", "the job to run", 120)
        wait_for(lambda: fetch(f"http://127.0.0.1:{health_port}/healthz"), "/healthz", 60)
        text = wait_for(
            lambda: (
                (t := fetch(f"http://127.0.0.1:{metrics_port}/metrics"))
                and 'rlhf_operator_jobs{phase="Running"} 1.0' in t
                and t
            ),
            "the jobs gauge",
            60,
        )
        typed = {line.split()[2] for line in text.splitlines() if line.startswith("# TYPE ")}
        for name in metrics_names.OPERATOR_METRICS:
            assert name in typed or name.removesuffix("_total") in typed, name
        assert 'rlhf_operator_reconcile_total{result="done"}' in text
        assert "rlhf_operator_planning_duration_seconds_count 1.0" in text
    finally:
        proc.terminate()
        proc.wait(30)
        log.close()
    assert proc.returncode in (0, -15), (tmp_path / "operator.log").read_text()[-3000:]
