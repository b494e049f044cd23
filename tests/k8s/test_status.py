"""Status bookkeeping and pod summaries: pure functions."""

from __future__ import annotations

import datetime
import subprocess
import sys

from rlhf_operator.k8s.config import OperatorConfig
from rlhf_operator.k8s.pods import pod_view
from rlhf_operator.k8s.status import StatusUpdate, iso

T0 = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)
T1 = T0 + datetime.timedelta(minutes=5)


def test_conditions_keep_their_transition_time_until_status_flips():
    first = StatusUpdate(None, 3, T0)
    assert first.set_condition("Planned", "False", "InsufficientGPUs", "2 GPUs missing")
    first.set_phase("Pending")
    patch = first.patch()
    assert patch == {
        "status": {
            "phase": "Pending",
            "observedGeneration": 3,
            "conditions": [
                {
                    "type": "Planned",
                    "status": "False",
                    "reason": "InsufficientGPUs",
                    "message": "2 GPUs missing",
                    "lastTransitionTime": iso(T0),
                    "observedGeneration": 3,
                }
            ],
        }
    }
    again = StatusUpdate(patch["status"], 3, T1)
    assert not again.set_condition("Planned", "False", "InsufficientGPUs", "2 GPUs missing")
    assert again.patch() is None  # nothing changed: no API call
    flipped = StatusUpdate(patch["status"], 3, T1)
    assert flipped.set_condition("Planned", "True", "Planned", "ok")
    flipped.set_phase("Succeeded")
    status = flipped.patch()["status"]
    assert status["conditions"][0]["lastTransitionTime"] == iso(T1)
    assert status["completionTime"] == iso(T1)


def test_operator_fields_only():
    update = StatusUpdate({"iteration": 7, "metrics": {"rewardMean": 0.5}}, 1, T0)
    update.set_phase("Running")
    assert set(update.patch()["status"]) == {"phase", "observedGeneration"}


def test_pod_view_reads_labels_phase_and_exit_code():
    view = pod_view(
        {
            "metadata": {
                "name": "j-worker-3-2",
                "labels": {"rlhf.dev/component": "worker", "rlhf.dev/attempt": "2"},
                "annotations": {"rlhf.dev/node": "3"},
            },
            "spec": {
                "nodeName": "gpu-7",
                "containers": [{"resources": {"limits": {"nvidia.com/gpu": "8"}}}],
            },
            "status": {
                "phase": "Failed",
                "containerStatuses": [
                    {"state": {"terminated": {"exitCode": 137, "reason": "OOMKilled"}}}
                ],
            },
        }
    )
    assert (view.name, view.component, view.node, view.attempt, view.phase) == (
        "j-worker-3-2",
        "worker",
        3,
        2,
        "Failed",
    )
    assert (view.node_name, view.gpus) == ("gpu-7", 8)
    assert view.reason == "OOMKilled, exit code 137"


def test_config_from_environment():
    config = OperatorConfig.from_env(
        {
            "RLHF_OPERATOR_NAMESPACES": "a, b",
            "RLHF_OPERATOR_LOG_LEVEL": "debug",
            "RLHF_OPERATOR_WORKER_IMAGE": "w:2",
            "RLHF_OPERATOR_FAILURE_SETTLE_SECONDS": "2.5",
        }
    )
    assert config.failure_settle_seconds == 2.5
    assert config.namespaces == ("a", "b") and config.log_level == "DEBUG"
    assert config.worker_image == "w:2" and config.metrics_port == 8080


def test_operator_entry_points_answer_help():
    for command in (
        ["-m", "rlhf_operator", "--help"],
        ["-m", "rlhf_operator.cli.main", "operator", "--help"],
    ):
        out = subprocess.run([sys.executable, *command], capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        assert "--namespace" in out.stdout
