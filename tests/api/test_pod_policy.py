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
    ({"nodeName": "gpu-7"}, f"{T}.nodeName", "allowHostNamespaces"),
    (
        {"containers": [{"name": "w", "ports": [{"containerPort": 22, "hostPort": 22}]}]},
        f"{T}.containers[0].ports[0].hostPort",
        "allowHostNamespaces",
    ),
    (
        container({"capabilities": {"drop": []}}),
        f"{T}.containers[0].securityContext.capabilities.drop",
        "allowPrivileged",
    ),
    (
        container({"allowPrivilegeEscalation": None}),
        f"{T}.containers[0].securityContext.allowPrivilegeEscalation",
        "allowPrivileged",
    ),
    ({"securityContext": {"runAsNonRoot": None}}, f"{T}.securityContext.runAsNonRoot", "allowRoot"),
    (
        {"securityContext": {"seccompProfile": {"type": "Unconfined"}}},
        f"{T}.securityContext.seccompProfile",
        "allowPrivileged",
    ),
    ({"securityContext": {"fsGroup": 0}}, f"{T}.securityContext.fsGroup", "allowRoot"),
    (
        {"volumes": [{"name": "s", "secret": {"secretName": "other-job-token"}}]},
        f"{T}.volumes[0].secret",
        "allowedVolumeTypes",
    ),
    (
        {"volumes": [{"name": "g", "gitRepo": {"repository": "https://x"}}]},
        f"{T}.volumes[0].gitRepo",
        "allowedVolumeTypes",
    ),
    (
        {"automountServiceAccountToken": None},
        f"{T}.automountServiceAccountToken",
        "allowServiceAccount",
    ),
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
        allowed_capabilities=("CAP_SYS_ADMIN", "ipc_lock"),
        allow_service_account=True,
        allowed_volume_types=("secret", "gitRepo"),
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


@pytest.mark.parametrize(
    ("metadata", "path"),
    [
        ({"namespace": "kube-system"}, "metadata.namespace"),
        ({"name": "x"}, "metadata.name"),
        ({"ownerReferences": []}, "metadata.ownerReferences"),
        ({"labels": {"rlhf.dev/job": "another-job"}}, "metadata.labels.rlhf.dev/job"),
        (
            {"labels": {"app.kubernetes.io/managed-by": "me"}},
            "metadata.labels.app.kubernetes.io/managed-by",
        ),
    ],
)
def test_a_template_cannot_pass_its_pods_off_as_another_s(metadata, path) -> None:
    job = copy.deepcopy(BASE)
    job["spec"]["resources"]["podTemplate"] = {"metadata": metadata}
    _, errors = validate_object(job)
    assert [e.path for e in errors] == [f"spec.resources.podTemplate.{path}"], errors


def test_a_projected_service_account_token_is_refused_even_where_projected_is_allowed() -> None:
    volume = {"name": "t", "projected": {"sources": [{"serviceAccountToken": {"path": "t"}}]}}
    job, errors = validate_object(with_template({"volumes": [volume]}))
    assert [e.path for e in errors] == [f"{T}.volumes[0].projected"]
    allowed = PodPolicy(allowed_volume_types=("projected",))
    assert [e.path for e in policy_errors(job, allowed)] == [f"{T}.volumes[0].projected"]


def test_a_malformed_template_is_an_error_not_a_crash() -> None:
    _, errors = validate_object(
        with_template(
            {"securityContext": [], "containers": [{"securityContext": {"capabilities": []}}]}
        )
    )
    assert {e.path for e in errors} == {
        f"{T}.securityContext",
        f"{T}.containers[0].securityContext.capabilities",
    }
    assert all("expected a mapping" in e.message for e in errors)
