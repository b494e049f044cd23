"""Pure builders of a job's child objects: spec in, manifest (a dict) out.

Nothing here talks to the API server, so every manifest is unit-tested as
data. The handlers only decide which of these to create or delete.

Worker pods: one pod per rank, each with `nvidia.com/gpu: 1` (or one CPU slot
in local mode) running exactly `worker_command()` with `WorkerSettings.to_env()`
(`contract.launch`) — the launch contract local mode uses, one process per pod. Why per rank and not
one pod per node running gpusPerNode processes: a failed rank is one failed
pod (its exit code and logs are its own, `kubectl logs job-worker-5`), no
process supervisor is needed inside the container, and the contract stays
one process = one environment. The plan's node locality (tensor parallelism
over NVLink inside a node) is kept by a required pod affinity: the ranks of
plan node n carry the label `rlhf.dev/node-slot: n` and must share a host
with the pods carrying the same label (the first one matches itself, which
Kubernetes allows). Inside a pod the one visible GPU is cuda:0, so
LOCAL_RANK is 0 in GPU pods.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Any

import yaml

from ..api import API_VERSION, KIND, PLURAL, RLHFJob
from ..api.job import GROUP
from ..contract import launch
from ..contract.launch import WorkerSettings, worker_command
from ..controlplane import exits
from ..coordinator_env import (
    CONFIG_DIR,
    DEFAULT_CONTROL_PORT,
    DEFAULT_MASTER_PORT,
    DEFAULT_METRICS_PORT,
    SECRET_DIR,
    WORKER_HOSTS,
    CoordinatorSettings,
)
from . import names
from .config import OperatorConfig
from .inventory import GPU_RESOURCE
from .merge import merge

COORDINATOR_MODULE = "rlhf_operator.coordinator"
RUN_AS_USER = 10001  # the images' non-root user
SHM_VOLUME = "dshm"
TOKEN_VOLUME = "token"
CONFIG_VOLUME = "config"
KUEUE_QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
KUEUE_GROUP_LABEL = "kueue.x-k8s.io/pod-group-name"
KUEUE_COUNT_ANNOTATION = "kueue.x-k8s.io/pod-group-total-count"
KUEUE_GATE = "kueue.x-k8s.io/admission"
VOLCANO_GROUP_ANNOTATION = "scheduling.k8s.io/group-name"
COSCHEDULING_LABEL = "scheduling.x-k8s.io/pod-group"
HOST_TOPOLOGY = "kubernetes.io/hostname"


@dataclass(frozen=True)
class JobRef:
    """The identity of the owning RLHFJob."""

    name: str
    namespace: str
    uid: str


@dataclass(frozen=True)
class Topology:
    """The plan's shape: nodes x devices per node (one worker pod per device)."""

    nodes: int
    per_node: int
    gpu: bool
    """True: one nvidia.com/gpu per worker pod; False: CPU slots (local mode)."""

    @property
    def world_size(self) -> int:
        return self.nodes * self.per_node


def topology_for(job: RLHFJob) -> Topology:
    """The job's devices as the planner sees them (`planner.cluster_for`)."""
    res = job.spec.resources
    if res.local is not None:
        return Topology(1, res.local.slots, gpu=False)
    total = res.gpus or 1
    per_node = min(res.gpus_per_node, total)
    return Topology(total // per_node, per_node, gpu=True)


def owner_reference(ref: JobRef) -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "name": ref.name,
        "uid": ref.uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def _meta(ref: JobRef, name: str, labels: dict[str, str] | None = None) -> dict[str, Any]:
    return {
        "name": name,
        "namespace": ref.namespace,
        "labels": {**names.job_labels(ref.name), **(labels or {})},
        "ownerReferences": [owner_reference(ref)],
    }


def job_manifest_yaml(body: dict[str, Any]) -> str:
    """The job as the coordinator reads it (`job.yaml`): the spec and the user's
    metadata, without status or the operator's own annotations."""
    meta = body.get("metadata") or {}
    annotations = {
        k: v
        for k, v in (meta.get("annotations") or {}).items()
        if not k.startswith((f"{GROUP}/", "kopf.zalando.org/", "kubectl.kubernetes.io/"))
    }
    keep: dict[str, Any] = {"name": meta.get("name"), "namespace": meta.get("namespace")}
    if meta.get("labels"):
        keep["labels"] = dict(meta["labels"])
    if annotations:
        keep["annotations"] = annotations
    doc = {"apiVersion": API_VERSION, "kind": KIND, "metadata": keep, "spec": body.get("spec")}
    return yaml.safe_dump(doc, sort_keys=False)


def build_config_map(ref: JobRef, job_yaml: str, plan_json: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _meta(ref, names.config_map_name(ref.name)),
        "data": {names.CONFIG_KEY_JOB: job_yaml, names.CONFIG_KEY_PLAN: plan_json},
    }


def build_secret(ref: JobRef, token: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": _meta(ref, names.secret_name(ref.name)),
        "type": "Opaque",
        "data": {names.SECRET_KEY_TOKEN: base64.b64encode(token.encode()).decode()},
    }


def build_service(ref: JobRef) -> dict[str, Any]:
    """Headless: gives every pod a stable DNS name before it is ready (rendezvous)."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _meta(ref, names.service_name(ref.name)),
        "spec": {
            "clusterIP": "None",
            "publishNotReadyAddresses": True,
            "selector": names.job_labels(ref.name),
            "ports": [
                {"name": names.CONTROL_PORT_NAME, "port": DEFAULT_CONTROL_PORT},
                {"name": names.METRICS_PORT_NAME, "port": DEFAULT_METRICS_PORT},
                {"name": names.RENDEZVOUS_PORT_NAME, "port": DEFAULT_MASTER_PORT},
            ],
        },
    }


def build_coordinator_rbac(ref: JobRef) -> list[dict[str, Any]]:
    """ServiceAccount, Role and RoleBinding of one job's coordinator: it may read
    its own RLHFJob and patch its status, nothing else (resourceNames)."""
    name = names.coordinator_name(ref.name)
    labels = {names.LABEL_COMPONENT: names.COORDINATOR}
    return [
        {
            "apiVersion": "v1",
            "kind": "ServiceAccount",
            "metadata": _meta(ref, name, labels),
            "automountServiceAccountToken": True,
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "Role",
            "metadata": _meta(ref, name, labels),
            "rules": [
                {
                    "apiGroups": [GROUP],
                    "resources": [PLURAL],
                    "resourceNames": [ref.name],
                    "verbs": ["get"],
                },
                {
                    "apiGroups": [GROUP],
                    "resources": [f"{PLURAL}/status"],
                    "resourceNames": [ref.name],
                    "verbs": ["get", "patch"],
                },
            ],
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": _meta(ref, name, labels),
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
            "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": ref.namespace}],
        },
    ]


def _pod_security() -> dict[str, Any]:
    return {
        "runAsNonRoot": True,
        "runAsUser": RUN_AS_USER,
        "runAsGroup": RUN_AS_USER,
        "fsGroup": RUN_AS_USER,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def _container_security() -> dict[str, Any]:
    return {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}


def _env_list(env: dict[str, str]) -> list[dict[str, str]]:
    return [{"name": k, "value": v} for k, v in env.items()]


def _exit_reason_fields(env: dict[str, str]) -> dict[str, Any]:
    """A container's env (with where to leave its exit reason) and the matching
    termination-message fields: the reason outlives the pod, which a restart deletes.
    A process that dies without leaving one (an uncaught exception) gets the end
    of its log instead, whose last line is the exception."""
    env = {**env, exits.TERMINATION_LOG_ENV: exits.TERMINATION_LOG_PATH}
    return {
        "env": _env_list(env),
        "terminationMessagePath": exits.TERMINATION_LOG_PATH,
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }


def _token_volume(ref: JobRef) -> dict[str, Any]:
    return {
        "name": TOKEN_VOLUME,
        "secret": {"secretName": names.secret_name(ref.name), "defaultMode": 0o440},
    }


def scheduling_mode(job: RLHFJob) -> str:
    """none | volcano | coscheduling | kueue: how the gang is scheduled.

    A schedulerName of `volcano` gets a Volcano PodGroup; any other scheduler
    name gets a scheduler-plugins (coscheduling) PodGroup; a queue without a
    scheduler name gets Kueue's plain-pod-group labels and admission gate."""
    s = job.spec.run_policy.scheduling
    if s.scheduler_name == "volcano":
        return "volcano"
    if s.scheduler_name:
        return "coscheduling"
    if s.queue:
        return "kueue"
    return "none"


def _gang_metadata(ref: JobRef, job: RLHFJob, size: int) -> tuple[dict[str, str], dict[str, str]]:
    """Labels and annotations every pod of the job carries for its gang scheduler."""
    mode = scheduling_mode(job)
    group = names.pod_group_name(ref.name)
    if mode == "volcano":
        return {}, {VOLCANO_GROUP_ANNOTATION: group}
    if mode == "coscheduling":
        return {COSCHEDULING_LABEL: group}, {}
    if mode == "kueue":
        queue = job.spec.run_policy.scheduling.queue or ""
        return (
            {KUEUE_QUEUE_LABEL: queue, KUEUE_GROUP_LABEL: group},
            {KUEUE_COUNT_ANNOTATION: str(size)},
        )
    return {}, {}


def build_pod_group(ref: JobRef, job: RLHFJob, size: int) -> dict[str, Any] | None:
    """The PodGroup of a gang-scheduled job (all `size` pods or none), if any."""
    mode = scheduling_mode(job)
    queue = job.spec.run_policy.scheduling.queue
    meta = _meta(ref, names.pod_group_name(ref.name))
    if mode == "volcano":
        spec: dict[str, Any] = {"minMember": size}
        if queue:
            spec["queue"] = queue
        if job.spec.run_policy.scheduling.priority_class_name:
            spec["priorityClassName"] = job.spec.run_policy.scheduling.priority_class_name
        return {
            "apiVersion": "scheduling.volcano.sh/v1beta1",
            "kind": "PodGroup",
            "metadata": meta,
            "spec": spec,
        }
    if mode == "coscheduling":
        return {
            "apiVersion": "scheduling.x-k8s.io/v1alpha1",
            "kind": "PodGroup",
            "metadata": meta,
            "spec": {"minMember": size},
        }
    return None


def _base_pod(
    ref: JobRef,
    job: RLHFJob,
    name: str,
    labels: dict[str, str],
    size: int,
) -> dict[str, Any]:
    gang_labels, gang_annotations = _gang_metadata(ref, job, size)
    meta = _meta(ref, name, {**labels, **gang_labels})
    if gang_annotations:
        meta["annotations"] = gang_annotations
    spec: dict[str, Any] = {
        "restartPolicy": "Never",  # the operator restarts the whole gang, never one rank
        "hostname": name,
        "subdomain": names.service_name(ref.name),
        "enableServiceLinks": False,
        "securityContext": _pod_security(),
    }
    s = job.spec.run_policy.scheduling
    if s.scheduler_name:
        spec["schedulerName"] = s.scheduler_name
    if s.priority_class_name:
        spec["priorityClassName"] = s.priority_class_name
    if scheduling_mode(job) == "kueue":
        spec["schedulingGates"] = [{"name": KUEUE_GATE}]
    return {"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": spec}


def worker_hosts(ref: JobRef, size: int) -> list[str]:
    return [
        names.pod_dns(ref.name, names.worker_name(ref.name, r), ref.namespace) for r in range(size)
    ]


def coordinator_address(ref: JobRef) -> str:
    host = names.pod_dns(ref.name, names.coordinator_name(ref.name), ref.namespace)
    return f"{host}:{DEFAULT_CONTROL_PORT}"


def build_coordinator_pod(
    ref: JobRef, job: RLHFJob, config: OperatorConfig, topology: Topology, attempt: int
) -> dict[str, Any]:
    name = names.coordinator_name(ref.name)
    settings = CoordinatorSettings(
        job_name=ref.name,
        namespace=ref.namespace,
        output_dir=job.spec.checkpoint.path or config.output_dir,
    )
    env = {
        **settings.to_env(),
        WORKER_HOSTS: ",".join(worker_hosts(ref, topology.world_size)),
        launch.LOG_LEVEL: config.log_level,
        "PYTHONUNBUFFERED": "1",
    }
    pod = _base_pod(
        ref,
        job,
        name,
        {names.LABEL_COMPONENT: names.COORDINATOR, names.LABEL_ATTEMPT: str(attempt)},
        topology.world_size + 1,
    )
    pod["metadata"].setdefault("annotations", {}).update(
        {
            "prometheus.io/scrape": "true",
            "prometheus.io/port": str(settings.metrics_port),
            "prometheus.io/path": "/metrics",
        }
    )
    pod["spec"].update(
        {
            "serviceAccountName": name,
            "containers": [
                {
                    "name": names.COORDINATOR,
                    "image": job.spec.resources.images.coordinator or config.coordinator_image,
                    "command": ["python", "-m", COORDINATOR_MODULE],
                    **_exit_reason_fields(env),
                    "ports": [
                        {"name": names.CONTROL_PORT_NAME, "containerPort": settings.control_port},
                        {"name": names.METRICS_PORT_NAME, "containerPort": settings.metrics_port},
                    ],
                    "resources": {"requests": {"cpu": "500m", "memory": "1Gi"}},
                    "volumeMounts": [
                        {"name": CONFIG_VOLUME, "mountPath": CONFIG_DIR, "readOnly": True},
                        {"name": TOKEN_VOLUME, "mountPath": SECRET_DIR, "readOnly": True},
                    ],
                    "securityContext": _container_security(),
                }
            ],
            "volumes": [
                {
                    "name": CONFIG_VOLUME,
                    "configMap": {"name": names.config_map_name(ref.name)},
                },
                _token_volume(ref),
            ],
        }
    )
    return _with_shared_storage(pod, job)


def _with_shared_storage(pod: dict[str, Any], job: RLHFJob) -> dict[str, Any]:
    """The coordinator mounts what the user's template mounts (the checkpoint
    volume), but takes none of the template's GPU-side settings."""
    template = job.spec.resources.pod_template or {}
    spec = template.get("spec") or {}
    volumes = spec.get("volumes") or []
    containers = spec.get("containers") or []
    mounts = (containers[0].get("volumeMounts") or []) if containers else []
    if not volumes and not mounts:
        return pod
    return merge(pod, {"spec": {"volumes": volumes, "containers": [{"volumeMounts": mounts}]}})


def build_worker_pod(
    ref: JobRef,
    job: RLHFJob,
    config: OperatorConfig,
    topology: Topology,
    rank: int,
    attempt: int,
) -> dict[str, Any]:
    name = names.worker_name(ref.name, rank)
    node_rank = rank // topology.per_node
    settings = WorkerSettings(
        job_id=ref.name,
        coordinator_addr=coordinator_address(ref),
        world_size=topology.world_size,
        master_addr=names.pod_dns(ref.name, names.worker_name(ref.name, 0), ref.namespace),
        master_port=DEFAULT_MASTER_PORT,
        device="cuda" if topology.gpu else "cpu",
        token_file=f"{SECRET_DIR}/{names.SECRET_KEY_TOKEN}",
        socket_ifname=config.socket_ifname,
        log_level=config.log_level,
    )
    local_rank = 0 if topology.gpu else rank % topology.per_node
    env = settings.for_rank(rank, local_rank=local_rank, node_rank=node_rank).to_env()
    if topology.gpu:
        env.update(
            {
                "NCCL_DEBUG": "WARN",
                "TORCH_NCCL_ASYNC_ERROR_HANDLING": "1",
                "NCCL_IB_DISABLE": "0",
            }
        )
    env.update(config.extra_worker_env)
    labels = {
        names.LABEL_COMPONENT: names.WORKER,
        names.LABEL_RANK: str(rank),
        names.LABEL_NODE_SLOT: str(node_rank),
        names.LABEL_ATTEMPT: str(attempt),
    }
    pod = _base_pod(ref, job, name, labels, topology.world_size + 1)
    shm: dict[str, Any] = {"medium": "Memory"}
    if config.shm_size:
        shm["sizeLimit"] = config.shm_size
    container: dict[str, Any] = {
        "name": names.WORKER,
        "image": job.spec.resources.images.worker or config.worker_image,
        "command": worker_command("python"),
        **_exit_reason_fields(env),
        "volumeMounts": [
            {"name": SHM_VOLUME, "mountPath": "/dev/shm"},
            {"name": TOKEN_VOLUME, "mountPath": SECRET_DIR, "readOnly": True},
        ],
        "securityContext": _container_security(),
    }
    if rank == 0:
        container["ports"] = [
            {"name": names.RENDEZVOUS_PORT_NAME, "containerPort": DEFAULT_MASTER_PORT}
        ]
    if topology.gpu:
        container["resources"] = {"limits": {GPU_RESOURCE: "1"}, "requests": {GPU_RESOURCE: "1"}}
    res = job.spec.resources
    pod["spec"].update(
        {
            "automountServiceAccountToken": False,  # workers never call the API
            "containers": [container],
            "volumes": [{"name": SHM_VOLUME, "emptyDir": shm}, _token_volume(ref)],
        }
    )
    if res.node_selector:
        pod["spec"]["nodeSelector"] = dict(res.node_selector)
    if res.tolerations:
        pod["spec"]["tolerations"] = [t.to_manifest() for t in res.tolerations]
    affinity = dict(res.affinity or {})
    if topology.gpu and topology.nodes * topology.per_node > 1:
        affinity = merge(affinity, {"podAffinity": _same_host_as_slot(ref, node_rank)})
    if affinity:
        pod["spec"]["affinity"] = affinity
    if res.pod_template:
        pod = merge(pod, res.pod_template)
    return pod


def _same_host_as_slot(ref: JobRef, node_rank: int) -> dict[str, Any]:
    return {
        "requiredDuringSchedulingIgnoredDuringExecution": [
            {
                "labelSelector": {
                    "matchLabels": {
                        names.LABEL_JOB: ref.name,
                        names.LABEL_NODE_SLOT: str(node_rank),
                    }
                },
                "topologyKey": HOST_TOPOLOGY,
            }
        ]
    }


def build_worker_pods(
    ref: JobRef, job: RLHFJob, config: OperatorConfig, topology: Topology, attempt: int
) -> list[dict[str, Any]]:
    return [
        build_worker_pod(ref, job, config, topology, rank, attempt)
        for rank in range(topology.world_size)
    ]
