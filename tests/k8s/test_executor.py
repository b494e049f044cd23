"""The test pod executor itself: a pod runs as a process with its volumes,
rewritten hosts, ports and paths, and its exit code becomes the pod's phase."""

from __future__ import annotations

import json

import pytest

from .cluster import NAMESPACE, wait_for
from .executor import PodExecutor

SCRIPT = """
import json, os, pathlib, sys
env = {k: os.environ[k] for k in ("MASTER_ADDR", "COORD", "RLHF_CONTROL_PORT", "RLHF_DEVICE",
                                 "RLHF_OUTPUT_DIR", "HOSTS")}
env["token"] = pathlib.Path(os.environ["TOKEN_FILE"]).read_text()
env["plan"] = pathlib.Path(os.environ["PLAN"]).read_text()
print("RESULT " + json.dumps(env))
sys.exit(int(os.environ["EXIT"]))
"""


def pod(name: str, exit_code: int, port: int | None = None) -> dict:
    env = {
        "MASTER_ADDR": "j-worker-0.j.default.svc",
        "COORD": "j-coordinator.j.default.svc:50051",
        "RLHF_CONTROL_PORT": "50051",
        "RLHF_DEVICE": "cuda",
        "RLHF_OUTPUT_DIR": "/var/lib/rlhf",
        "HOSTS": "j-worker-0.j.default.svc,j-worker-1.j.default.svc",
        "TOKEN_FILE": "/var/run/secrets/rlhf/token",
        "PLAN": "/etc/rlhf/plan.json",
        "EXIT": str(exit_code),
    }
    container = {
        "name": "main",
        "command": ["python", "-c", SCRIPT],
        "env": [{"name": k, "value": v} for k, v in env.items()],
        "volumeMounts": [
            {"name": "token", "mountPath": "/var/run/secrets/rlhf"},
            {"name": "config", "mountPath": "/etc/rlhf"},
        ],
    }
    if port:
        container["ports"] = [{"name": "control", "containerPort": port}]
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": NAMESPACE, "labels": {"rlhf.dev/job": "j"}},
        "spec": {
            "containers": [container],
            "volumes": [
                {"name": "token", "secret": {"secretName": "j-token"}},
                {"name": "config", "configMap": {"name": "j-config"}},
            ],
        },
    }


@pytest.fixture()
def executor(cluster, tmp_path):
    ex = PodExecutor(cluster, tmp_path / "pods", tmp_path).start()
    yield ex
    ex.stop()


def result(executor: PodExecutor, name: str) -> dict:
    line = next(x for x in executor.log_of(name).splitlines() if x.startswith("RESULT "))
    return json.loads(line.removeprefix("RESULT "))


def test_pods_run_as_processes_with_their_environment(cluster, executor, tmp_path):
    api = cluster.kube
    api.create(
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "j-token", "namespace": NAMESPACE},
            "data": {"token": "czNjcmV0"},  # s3cret
        }
    )
    api.create(
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "j-config", "namespace": NAMESPACE},
            "data": {"plan.json": '{"version": 1}'},
        }
    )
    api.create(pod("j-coordinator", 0, port=50051))
    api.create(pod("j-worker-0", 3))
    phases = lambda: {  # noqa: E731
        p["metadata"]["name"]: (p.get("status") or {}).get("phase") for p in cluster.pods("j")
    }
    wait_for(
        lambda: phases() == {"j-coordinator": "Succeeded", "j-worker-0": "Failed"},
        "the pods to finish",
    )
    worker = next(p for p in cluster.pods("j") if p["metadata"]["name"] == "j-worker-0")
    assert worker["status"]["containerStatuses"][0]["state"]["terminated"]["exitCode"] == 3
    coordinator, other = result(executor, "j-coordinator"), result(executor, "j-worker-0")
    local_port = executor.ports[(NAMESPACE, "j", 50051)]
    assert coordinator["RLHF_CONTROL_PORT"] == str(local_port)
    assert other["COORD"] == f"127.0.0.1:{local_port}"
    assert other["MASTER_ADDR"] == "127.0.0.1" and other["HOSTS"] == "127.0.0.1,127.0.0.1"
    assert other["RLHF_DEVICE"] == "cpu"
    assert other["token"] == "s3cret" and other["plan"] == '{"version": 1}'
    # Paths outside volumes land in one directory per job, the same for every pod.
    assert coordinator["RLHF_OUTPUT_DIR"] == other["RLHF_OUTPUT_DIR"]
    assert coordinator["RLHF_OUTPUT_DIR"].startswith(str(tmp_path))
