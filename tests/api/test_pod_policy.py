"""The operator's pod policy over a job's podTemplate: refused fields named, one line each."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from rlhf_operator.api import validate_object
from rlhf_operator.api.pod_policy import PodPolicy, policy_errors
from rlhf_operator.cli.main import main

ROOT = Path(__file__).resolve().parents[2]
BASE = yaml.safe_load((ROOT / "examples" / "llama7b-ppo-8gpu.yaml").read_text())
T = "spec.resources.podTemplate.spec"


def with_template(spec: dict[str, Any]) -> dict[str, Any]:
    job = copy.deepcopy(BASE)
    job["spec"]["resources"]["podTemplate"] = {"spec": spec}
    return job


def container(security: dict[str, Any]) -> dict[str, Any]:
    return {"containers": [{"name": "worker", "securityContext": security}]}


CASES = [
    (
        container({"privileged": True}),
        f"{T}.containers[0].securityContext.privileged",
        "allowPrivileged",
    ),
    (
        container({"allowPrivilegeEscalation": True}),
        f"{T}.containers[0].securityContext.allowPrivilegeEscalation",
        "allowPrivileged",
    ),
    ({"hostNetwork": True}, f"{T}.hostNetwork", "allowHostNamespaces"),
    ({"hostPID": True}, f"{T}.hostPID", "allowHostNamespaces"),
    ({"hostIPC": True}, f"{T}.hostIPC", "allowHostNamespaces"),
    (
        {"volumes": [{"name": "root", "hostPath": {"path": "/"}}]},
        f"{T}.volumes[0].hostPath",
        "allowHostPath",
    ),
    ({"securityContext": {"runAsUser": 0}}, f"{T}.securityContext.runAsUser", "allowRoot"),
    (container({"runAsUser": 0}), f"{T}.containers[0].securityContext.runAsUser", "allowRoot"),
    (
        container({"runAsNonRoot": False}),
        f"{T}.containers[0].securityContext.runAsNonRoot",
        "allowRoot",
    ),
    (
        container({"capabilities": {"add": ["SYS_ADMIN", "IPC_LOCK"]}}),
        f"{T}.containers[0].securityContext.capabilities.add",
        "allowedCapabilities",
    ),
    ({"serviceAccountName": "cluster-admin-sa"}, f"{T}.serviceAccountName", "allowServiceAccount"),
    (
        {"automountServiceAccountToken": True},
        f"{T}.automountServiceAccountToken",
        "allowServiceAccount",
    ),
    (
        {"initContainers": [{"name": "x", "securityContext": {"privileged": True}}]},
        f"{T}.initContainers[0].securityContext.privileged",
        "allowPrivileged",
    ),
]


@pytest.mark.parametrize(
    ("template", "path", "key"), CASES, ids=[c[1].split(".")[-1] for c in CASES]
)
def test_each_refused_field_is_named_with_the_value_that_allows_it(template, path, key) -> None:
    job, errors = validate_object(with_template(template))
    assert job is not None and [str(e) for e in errors] == [f"{path}: {errors[0].message}"], errors
    assert errors[0].message.endswith(
        f"is refused by the operator's pod policy (allowed by podPolicy.{key})"
    )
    # The administrator's allowance lets it through.
    allowed = PodPolicy(
        allow_privileged=True,
        allow_host_namespaces=True,
        allow_host_path=True,
        allow_root=True,
        allowed_capabilities=("SYS_ADMIN", "IPC_LOCK"),
        allow_service_account=True,
    )
    assert policy_errors(job, allowed) == []


def test_what_jobs_need_passes_the_default_policy() -> None:
    template = {
        "containers": [
            {
                "name": "worker",
                "env": [{"name": "NCCL_DEBUG", "value": "INFO"}],
                "securityContext": {"capabilities": {"add": ["IPC_LOCK"]}, "runAsUser": 10001},
                "volumeMounts": [{"name": "ckpt", "mountPath": "/ckpt"}],
            }
        ],
        "volumes": [{"name": "ckpt", "persistentVolumeClaim": {"claimName": "ckpt"}}],
        "priorityClassName": "high",
    }
    assert validate_object(with_template(template))[1] == []


def test_rlhfctl_validate_applies_the_default_policy(tmp_path, capsys) -> None:
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(with_template({"hostNetwork": True})))
    assert main(["validate", str(path)]) == 1
    err = capsys.readouterr()
    assert (
        f"{T}.hostNetwork: hostNetwork is refused by the operator's pod policy" in err.out + err.err
    )


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('{"allowPrivileged": "yes"}', "podPolicy.allowPrivileged: expected true or false"),
        ('{"allowEverything": true}', "podPolicy.allowEverything: unknown"),
        ('{"allowedCapabilities": "IPC_LOCK"}', "podPolicy.allowedCapabilities: expected a list"),
    ],
)
def test_a_bad_policy_is_named(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        PodPolicy.from_json(text)
    assert PodPolicy.from_json('{"allowHostPath": true}') == PodPolicy(allow_host_path=True)
