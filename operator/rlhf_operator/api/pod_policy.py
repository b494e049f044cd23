"""The operator's pod policy: what a job's `resources.podTemplate` may add to its pods.

The template is merged into every worker pod (volumes, env, a priority class...), and
its volumes and mounts into the coordinator pod. Left unchecked it would let any user
who may create an RLHFJob run privileged pods on the GPU nodes, read other Secrets,
or pass as another job's pod. Two layers keep that from happening:

- this check refuses, each as a `Valid=False` error naming the field, what the
  template asks for: privileged containers and privilege escalation, host
  namespaces, host ports, a node name (which skips the scheduler), root (user or
  group 0, runAsNonRoot false), unconfined seccomp or AppArmor, SELinux options,
  an unmasked /proc, capabilities beyond an allowed list (IPC_LOCK by default: RDMA
  needs it), dropping fewer than ALL, volumes other than an allowed list of kinds
  (hostPath, Secret and projected volumes, which can carry a ServiceAccount token
  or another job's keys, are refused unless allowed), another ServiceAccount or a
  mounted token, and metadata other than labels and annotations (no name, no
  namespace, no owner, no label or annotation of the operator's own);
- the builders put the operator's metadata and hardening back after the merge, on
  every container, a sidecar included (`k8s.builders._hardened`).

An administrator allows what their cluster needs in the chart's `podPolicy` values
(the operator reads them as `RLHF_OPERATOR_POD_POLICY`). The operator holds each
job to its policy before planning and again whenever it creates pods. `rlhfctl
validate` and `rlhfctl manifests` apply the default policy. Pure.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from .checks import FieldError
from .job import GROUP, RLHFJob

TEMPLATE = "spec.resources.podTemplate"
CONTAINER_LISTS = ("initContainers", "containers", "ephemeralContainers")
# Volume kinds a template may add by default: storage, nothing of the host's or of the
# cluster's credentials.
SAFE_VOLUMES = (
    "persistentVolumeClaim",
    "emptyDir",
    "ephemeral",
    "configMap",
    "nfs",
    "csi",
    "downwardAPI",
)
OPERATOR_KEYS = (f"{GROUP}/", "app.kubernetes.io/managed-by")


@dataclass(frozen=True)
class PodPolicy:
    """What a pod template may do (chart values `podPolicy`, camelCase there)."""

    allow_privileged: bool = False
    """privileged containers, allowPrivilegeEscalation, unconfined seccomp/AppArmor, SELinux options, procMount."""
    allow_host_namespaces: bool = False
    """hostNetwork, hostPID, hostIPC, hostPort, nodeName."""
    allow_host_path: bool = False
    """hostPath volumes."""
    allow_root: bool = False
    """runAsUser, runAsGroup, fsGroup or supplementalGroups 0, runAsNonRoot false."""
    allowed_capabilities: tuple[str, ...] = ("IPC_LOCK",)
    """Capabilities a container may add (with or without CAP_)."""
    allow_service_account: bool = False
    """serviceAccountName, a mounted ServiceAccount token (the workers never call the API)."""
    allowed_volume_types: tuple[str, ...] = SAFE_VOLUMES
    """Volume kinds a template may add (add secret or projected to mount Secrets)."""

    def __post_init__(self) -> None:
        caps = tuple(c.upper().removeprefix("CAP_") for c in self.allowed_capabilities)
        object.__setattr__(self, "allowed_capabilities", caps)

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
            if key in ("allowedCapabilities", "allowedVolumeTypes"):
                if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                    raise ValueError(f"podPolicy.{key}: expected a list of names")
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


def _mapping(value: Any, path: str, errors: list[FieldError]) -> dict[str, Any]:
    """A field that must be a mapping, or {} and an error saying what it is."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        errors.append(FieldError(path, f"expected a mapping, got {type(value).__name__}"))
        return {}
    return value


def _list(value: Any, path: str, errors: list[FieldError]) -> list[Any]:
    if value is None:
        return []
    if not isinstance(value, list):
        errors.append(FieldError(path, f"expected a list, got {type(value).__name__}"))
        return []
    return value


def _containers(
    spec: dict[str, Any], errors: list[FieldError]
) -> Iterator[tuple[str, dict[str, Any]]]:
    for kind in CONTAINER_LISTS:
        for i, c in enumerate(_list(spec.get(kind), f"{TEMPLATE}.spec.{kind}", errors)):
            if isinstance(c, dict):
                yield f"{TEMPLATE}.spec.{kind}[{i}]", c


def _metadata_errors(template: dict[str, Any]) -> list[FieldError]:
    errors: list[FieldError] = []
    meta = _mapping(template.get("metadata"), f"{TEMPLATE}.metadata", errors)
    for key in meta:
        if key not in ("labels", "annotations"):
            errors.append(
                FieldError(f"{TEMPLATE}.metadata.{key}", "only labels and annotations may be set")
            )
    for part in ("labels", "annotations"):
        for name in _mapping(meta.get(part), f"{TEMPLATE}.metadata.{part}", errors):
            if str(name).startswith(OPERATOR_KEYS):
                errors.append(
                    FieldError(
                        f"{TEMPLATE}.metadata.{part}.{name}",
                        "is the operator's own (it says which job a pod belongs to)",
                    )
                )
    return errors


def _security_errors(
    path: str, security: dict[str, Any], policy: PodPolicy, pod: bool
) -> list[FieldError]:
    """One securityContext's fields the policy refuses (pod or container level)."""
    errors: list[FieldError] = []
    if not policy.allow_root:
        for key in ("runAsUser", "runAsGroup", "fsGroup"):
            if security.get(key) == 0:
                errors.append(_refused(f"{path}.{key}", "running as root", "allowRoot"))
        if 0 in (security.get("supplementalGroups") or []):
            errors.append(_refused(f"{path}.supplementalGroups", "group 0", "allowRoot"))
        if "runAsNonRoot" in security and security["runAsNonRoot"] is not True:
            errors.append(_refused(f"{path}.runAsNonRoot", "running as root", "allowRoot"))
    if not policy.allow_privileged:
        keys = () if pod else ("privileged", "allowPrivilegeEscalation", "procMount")
        for key in keys:
            value = security.get(key)
            if key in security and not (
                value is False or (key == "procMount" and value == "Default")
            ):
                errors.append(_refused(f"{path}.{key}", key, "allowPrivileged"))
        for key in ("seccompProfile", "appArmorProfile"):
            profile = security.get(key)
            if isinstance(profile, dict) and profile.get("type") == "Unconfined":
                errors.append(_refused(f"{path}.{key}", f"an unconfined {key}", "allowPrivileged"))
        for key in ("seLinuxOptions", "windowsOptions", "sysctls"):
            if security.get(key):
                errors.append(_refused(f"{path}.{key}", key, "allowPrivileged"))
    if not pod:
        caps = _mapping(security.get("capabilities"), f"{path}.capabilities", errors)
        added = [
            str(c).upper().removeprefix("CAP_")
            for c in _list(caps.get("add"), f"{path}.capabilities.add", errors)
        ]
        extra = [c for c in added if c not in policy.allowed_capabilities]
        if extra:
            errors.append(
                _refused(
                    f"{path}.capabilities.add", f"adding {', '.join(extra)}", "allowedCapabilities"
                )
            )
        dropped = [str(c).upper() for c in caps.get("drop") or []]
        if not policy.allow_privileged and "drop" in caps and "ALL" not in dropped:
            errors.append(
                _refused(f"{path}.capabilities.drop", "dropping less than ALL", "allowPrivileged")
            )
    return errors


def policy_errors(job: RLHFJob, policy: PodPolicy = DEFAULT_POD_POLICY) -> list[FieldError]:
    """What the job's pod template asks for that the policy refuses, one error per field."""
    template = job.spec.resources.pod_template or {}
    errors = _metadata_errors(template)
    spec = _mapping(template.get("spec"), f"{TEMPLATE}.spec", errors)
    if not policy.allow_host_namespaces:
        for key in ("hostNetwork", "hostPID", "hostIPC"):
            if spec.get(key):
                errors.append(_refused(f"{TEMPLATE}.spec.{key}", key, "allowHostNamespaces"))
        if spec.get("nodeName"):
            path = f"{TEMPLATE}.spec.nodeName"
            errors.append(_refused(path, "a node name (no scheduler)", "allowHostNamespaces"))
    for i, volume in enumerate(_list(spec.get("volumes"), f"{TEMPLATE}.spec.volumes", errors)):
        if not isinstance(volume, dict):
            continue
        for kind in (k for k in volume if k != "name"):
            path = f"{TEMPLATE}.spec.volumes[{i}].{kind}"
            if kind == "hostPath":
                if not policy.allow_host_path:
                    errors.append(_refused(path, "a hostPath volume", "allowHostPath"))
            elif kind not in policy.allowed_volume_types:
                errors.append(_refused(path, f"a {kind} volume", "allowedVolumeTypes"))
            elif kind == "projected" and not policy.allow_service_account:
                sources = _mapping(volume[kind], path, errors).get("sources") or []
                if any(isinstance(s, dict) and "serviceAccountToken" in s for s in sources):
                    errors.append(_refused(path, "a ServiceAccount token", "allowServiceAccount"))
    if not policy.allow_service_account:
        for key in ("serviceAccountName", "serviceAccount"):
            if spec.get(key):
                path = f"{TEMPLATE}.spec.{key}"
                errors.append(_refused(path, "another ServiceAccount", "allowServiceAccount"))
        if (
            "automountServiceAccountToken" in spec
            and spec["automountServiceAccountToken"] is not False
        ):
            path = f"{TEMPLATE}.spec.automountServiceAccountToken"
            errors.append(_refused(path, "a mounted ServiceAccount token", "allowServiceAccount"))
    pod_security = _mapping(spec.get("securityContext"), f"{TEMPLATE}.spec.securityContext", errors)
    errors += _security_errors(f"{TEMPLATE}.spec.securityContext", pod_security, policy, pod=True)
    for where, container in _containers(spec, errors):
        security = _mapping(container.get("securityContext"), f"{where}.securityContext", errors)
        errors += _security_errors(f"{where}.securityContext", security, policy, pod=False)
        if not policy.allow_host_namespaces:
            for j, port in enumerate(_list(container.get("ports"), f"{where}.ports", errors)):
                if isinstance(port, dict) and port.get("hostPort"):
                    path = f"{where}.ports[{j}].hostPort"
                    errors.append(_refused(path, "a host port", "allowHostNamespaces"))
    return errors
