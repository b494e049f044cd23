"""The operator's pod policy: what a job's `resources.podTemplate` may add to its pods.

The template is merged into every worker pod (volumes, env, a priority class...). Left
unchecked it would also let any user who may create an RLHFJob run privileged pods on
the GPU nodes: host namespaces, a hostPath of /, root, added capabilities, another
ServiceAccount with its token mounted. By default the policy refuses all of these,
each as a `Valid=False` condition whose message names the field; an administrator
allows what their cluster needs in the chart's `podPolicy` values (the operator reads
them as `RLHF_OPERATOR_POD_POLICY`). IPC_LOCK is allowed by default: RDMA needs it
(`resources.rdma` adds it itself). `rlhfctl validate` and `rlhfctl manifests` apply
the default policy. Pure.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from .checks import FieldError
from .job import RLHFJob

TEMPLATE = "spec.resources.podTemplate"
CONTAINER_LISTS = ("initContainers", "containers", "ephemeralContainers")


@dataclass(frozen=True)
class PodPolicy:
    """What a pod template may do (chart values `podPolicy`, camelCase there)."""

    allow_privileged: bool = False
    """privileged containers and allowPrivilegeEscalation."""
    allow_host_namespaces: bool = False
    """hostNetwork, hostPID, hostIPC."""
    allow_host_path: bool = False
    """hostPath volumes."""
    allow_root: bool = False
    """runAsUser 0, runAsGroup 0, runAsNonRoot false."""
    allowed_capabilities: tuple[str, ...] = ("IPC_LOCK",)
    """Capabilities a container may add."""
    allow_service_account: bool = False
    """serviceAccountName and a mounted ServiceAccount token (the workers never call the API)."""

    @classmethod
    def from_json(cls, text: str) -> PodPolicy:
        """The policy from its chart form ({"allowPrivileged": true, ...}); ValueError
        naming the key that is wrong."""
        data = json.loads(text) if text.strip() else {}
        if not isinstance(data, dict):
            raise ValueError("the pod policy must be a mapping")
        names = {_camel(f): f for f in cls.__dataclass_fields__}
        values: dict[str, Any] = {}
        for key, value in data.items():
            if key not in names:
                raise ValueError(f"podPolicy.{key}: unknown (known: {', '.join(sorted(names))})")
            if key == "allowedCapabilities":
                if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                    raise ValueError(f"podPolicy.{key}: expected a list of capability names")
                value = tuple(value)
            elif not isinstance(value, bool):
                raise ValueError(f"podPolicy.{key}: expected true or false, got {value!r}")
            values[names[key]] = value
        return cls(**values)


DEFAULT_POD_POLICY = PodPolicy()


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(p.capitalize() for p in rest)


def _refused(path: str, what: str, key: str) -> FieldError:
    return FieldError(
        path, f"{what} is refused by the operator's pod policy (allowed by podPolicy.{key})"
    )


def _containers(spec: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    for kind in CONTAINER_LISTS:
        for i, c in enumerate(spec.get(kind) or []):
            if isinstance(c, dict):
                yield f"{TEMPLATE}.spec.{kind}[{i}]", c


def _root(path: str, security: dict[str, Any]) -> list[str]:
    """The fields of one securityContext that run as root."""
    out = []
    for key in ("runAsUser", "runAsGroup"):
        if security.get(key) == 0:
            out.append(f"{path}.{key}")
    if security.get("runAsNonRoot") is False:
        out.append(f"{path}.runAsNonRoot")
    return out


def policy_errors(job: RLHFJob, policy: PodPolicy = DEFAULT_POD_POLICY) -> list[FieldError]:
    """What the job's pod template asks for that the policy refuses, one error per field."""
    template = job.spec.resources.pod_template or {}
    spec = template.get("spec") or {}
    if not isinstance(spec, dict):
        return []
    errors: list[FieldError] = []
    if not policy.allow_host_namespaces:
        for key in ("hostNetwork", "hostPID", "hostIPC"):
            if spec.get(key):
                errors.append(_refused(f"{TEMPLATE}.spec.{key}", key, "allowHostNamespaces"))
    if not policy.allow_host_path:
        for i, volume in enumerate(spec.get("volumes") or []):
            if isinstance(volume, dict) and "hostPath" in volume:
                path = f"{TEMPLATE}.spec.volumes[{i}].hostPath"
                errors.append(_refused(path, "a hostPath volume", "allowHostPath"))
    if not policy.allow_service_account:
        for key in ("serviceAccountName", "serviceAccount"):
            if spec.get(key):
                path = f"{TEMPLATE}.spec.{key}"
                errors.append(_refused(path, "another ServiceAccount", "allowServiceAccount"))
        if spec.get("automountServiceAccountToken"):
            path = f"{TEMPLATE}.spec.automountServiceAccountToken"
            errors.append(_refused(path, "a mounted ServiceAccount token", "allowServiceAccount"))
    if not policy.allow_root:
        pod_security = spec.get("securityContext") or {}
        for path in _root(f"{TEMPLATE}.spec.securityContext", pod_security):
            errors.append(_refused(path, "running as root", "allowRoot"))
    for where, container in _containers(spec):
        security = container.get("securityContext") or {}
        if not isinstance(security, dict):
            continue
        base = f"{where}.securityContext"
        if not policy.allow_privileged:
            for key in ("privileged", "allowPrivilegeEscalation"):
                if security.get(key):
                    errors.append(_refused(f"{base}.{key}", key, "allowPrivileged"))
        if not policy.allow_root:
            for path in _root(base, security):
                errors.append(_refused(path, "running as root", "allowRoot"))
        added = (security.get("capabilities") or {}).get("add") or []
        extra = [
            c
            for c in added
            if str(c).upper().removeprefix("CAP_") not in policy.allowed_capabilities
        ]
        if extra:
            errors.append(
                _refused(
                    f"{base}.capabilities.add",
                    f"adding {', '.join(map(str, extra))}",
                    "allowedCapabilities",
                )
            )
    return errors
