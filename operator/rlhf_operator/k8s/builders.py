"""Pure builders of a job's child objects: spec in, manifest (a dict) out.

Nothing here talks to the API server, so every manifest is unit-tested as
data. The handlers only decide which of these to create or delete.

Worker pods: one pod per plan node (`gpusPerNode` GPUs of one node, or the
job's whole block of a node when it uses part of one), requesting that many
GPUs and running `launcher_command()`: the launcher (`rlhf_worker.launcher`)
starts one worker process per GPU with `WorkerSettings.for_rank` and exits with
the failing rank's reason if any dies. Why a pod per node and not per rank:
containers in different pods cannot use NVLink/P2P or shared memory with each
other, so NCCL would send tensor-parallel traffic inside a node over the
network while the planner assumes NVLink bandwidth; and all worker pods have
one shape, so a Kueue Workload has two PodSets (coordinator, workers) at any
scale. Inside a pod its GPUs are cuda:0..G-1 and LOCAL_RANK is the index.
Memory-backed /dev/shm (NCCL's intra-node transport and vLLM use it), CPU and
memory requests from the job (defaults sized from the plan: `worker_resources`).
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Any

import yaml

from ..api import API_VERSION, KIND, PLURAL, RLHFJob
from ..api.job import GROUP
from ..contract import launch
from ..contract.launch import WorkerSettings, launcher_command
from ..controlplane import exits, tls
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
from .pods import KUEUE_GROUP
from .quantity import cpu_quantity, memory_quantity, parse_quantity

COORDINATOR_MODULE = "rlhf_operator.coordinator"
RUN_AS_USER = 10001  # the images' non-root user
SHM_VOLUME = "dshm"
TOKEN_VOLUME = "token"
CONFIG_VOLUME = "config"
KUEUE_QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
KUEUE_GROUP_LABEL = KUEUE_GROUP
KUEUE_COUNT_ANNOTATION = "kueue.x-k8s.io/pod-group-total-count"
VOLCANO_GROUP_ANNOTATION = "scheduling.k8s.io/group-name"
COSCHEDULING_LABEL = "scheduling.x-k8s.io/pod-group"
NAMESPACE_NAME_LABEL = "kubernetes.io/metadata.name"  # set on every namespace by the API server


@dataclass(frozen=True)
class JobRef:
    """The identity of the owning RLHFJob."""

    name: str
    namespace: str
    uid: str


@dataclass(frozen=True)
class Topology:
    """The plan's shape: nodes x devices per node (one worker pod per node)."""

    nodes: int
    per_node: int
    gpu: bool
    """True: per_node nvidia.com/gpu per worker pod; False: CPU slots (local mode)."""

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
    """The job's control-plane token."""
    return _secret(ref, names.secret_name(ref.name), {names.SECRET_KEY_TOKEN: token.encode()})


def build_tls_secret(ref: JobRef, certificates: tls.JobCertificates) -> dict[str, Any]:
    """The job's CA and certificates (`controlplane.tls`). A Secret of its own: a job that
    an older operator started has a token Secret without them, and gets this one at its
    next start."""
    return _secret(ref, names.tls_secret_name(ref.name), certificates.files())


def _secret(ref: JobRef, name: str, files: dict[str, bytes]) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": _meta(ref, name),
        "type": "Opaque",
        "data": {k: base64.b64encode(v).decode() for k, v in files.items()},
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


def build_network_policy(ref: JobRef, config: OperatorConfig) -> dict[str, Any]:
    """Ingress to the job's pods: from the job's own pods on any port (the control
    plane, the rendezvous, and NCCL/gloo, whose ports are chosen at run time), and to
    the coordinator's metrics port from the namespace Prometheus runs in. Nothing else
    in the cluster reaches them. Egress is left open (the coordinator calls the API
    server; workers read models and data from wherever volumes point)."""
    rules: list[dict[str, Any]] = [
        {"from": [{"podSelector": {"matchLabels": names.job_labels(ref.name)}}]}
    ]
    if config.metrics_namespace:
        rules.append(
            {
                "from": [
                    {
                        "namespaceSelector": {
                            "matchLabels": {NAMESPACE_NAME_LABEL: config.metrics_namespace}
                        }
                    }
                ],
                "ports": [{"protocol": "TCP", "port": DEFAULT_METRICS_PORT}],
            }
        )
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": _meta(ref, names.network_policy_name(ref.name)),
        "spec": {
            "podSelector": {"matchLabels": names.job_labels(ref.name)},
            "policyTypes": ["Ingress"],
            "ingress": rules,
        },
    }


def build_coordinator_rbac(ref: JobRef, job: RLHFJob) -> list[dict[str, Any]]:
    """ServiceAccount, Role and RoleBinding of one job's coordinator: it may read
    its own RLHFJob and patch its status, nothing else (resourceNames). The
    ServiceAccount carries the job's image pull secrets."""
    name = names.coordinator_name(ref.name)
    labels = {names.LABEL_COMPONENT: names.COORDINATOR}
    account: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": _meta(ref, name, labels),
        "automountServiceAccountToken": True,
    }
    if job.spec.resources.image_pull_secrets:
        account["imagePullSecrets"] = [{"name": n} for n in job.spec.resources.image_pull_secrets]
    return [
        account,
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


def _token_volume(ref: JobRef, tls_files: tuple[str, ...]) -> dict[str, Any]:
    """The job's token and, of its certificates, only this pod's own (one directory)."""
    return {
        "name": TOKEN_VOLUME,
        "projected": {
            "defaultMode": 0o440,
            "sources": [
                {
                    "secret": {
                        "name": names.secret_name(ref.name),
                        "items": [{"key": names.SECRET_KEY_TOKEN, "path": names.SECRET_KEY_TOKEN}],
                    }
                },
                {
                    "secret": {
                        "name": names.tls_secret_name(ref.name),
                        "items": [{"key": k, "path": k} for k in tls_files],
                    }
                },
            ],
        },
    }


def scheduling_mode(job: RLHFJob) -> str:
    """none | volcano | coscheduling | kueue: how the gang is scheduled.

    A schedulerName of `volcano` gets a Volcano PodGroup; any other scheduler
    name gets a scheduler-plugins (coscheduling) PodGroup; a queue without a
    scheduler name makes the job's pods one Kueue plain-pod group (its labels and
    total count): Kueue's pod webhook gates them and Kueue admits the group whole.
    Only "none" is admitted by the operator itself (`admission`)."""
    s = job.spec.run_policy.scheduling
    if s.scheduler_name == "volcano":
        return "volcano"
    if s.scheduler_name:
        return "coscheduling"
    if s.queue:
        return "kueue"
    return "none"


def _gang_metadata(
    ref: JobRef, job: RLHFJob, size: int, kueue_group: str | None
) -> tuple[dict[str, str], dict[str, str]]:
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
            {
                KUEUE_QUEUE_LABEL: queue,
                KUEUE_GROUP_LABEL: kueue_group or names.kueue_group_name(ref.name, 0),
            },
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
    kueue_group: str | None = None,
) -> dict[str, Any]:
    gang_labels, gang_annotations = _gang_metadata(ref, job, size, kueue_group)
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
    return {"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": spec}


def worker_hosts(ref: JobRef, topology: Topology, attempt: int) -> list[str]:
    """The worker pods' DNS names, in node order."""
    return [
        names.pod_dns(ref.name, names.worker_name(ref.name, n, attempt), ref.namespace)
        for n in range(topology.nodes)
    ]


def coordinator_address(ref: JobRef, attempt: int) -> str:
    pod = names.coordinator_pod_name(ref.name, attempt)
    return f"{names.pod_dns(ref.name, pod, ref.namespace)}:{DEFAULT_CONTROL_PORT}"


def _placement(job: RLHFJob) -> dict[str, Any]:
    """Pod spec fields every pod of the job takes from it: node selector, tolerations,
    image pull secrets."""
    res = job.spec.resources
    out: dict[str, Any] = {}
    if res.node_selector:
        out["nodeSelector"] = dict(res.node_selector)
    if res.tolerations:
        out["tolerations"] = [t.to_manifest() for t in res.tolerations]
    if res.image_pull_secrets:
        out["imagePullSecrets"] = [{"name": n} for n in res.image_pull_secrets]
    return out


def build_coordinator_pod(
    ref: JobRef,
    job: RLHFJob,
    config: OperatorConfig,
    topology: Topology,
    attempt: int,
    kueue_group: str | None = None,
) -> dict[str, Any]:
    name = names.coordinator_pod_name(ref.name, attempt)
    settings = CoordinatorSettings(
        job_name=ref.name,
        namespace=ref.namespace,
        output_dir=job.spec.checkpoint.path or config.output_dir,
    )
    env = {
        **settings.to_env(),
        WORKER_HOSTS: ",".join(worker_hosts(ref, topology, attempt)),
        launch.LOG_LEVEL: config.log_level,
        "PYTHONUNBUFFERED": "1",
    }
    pod = _base_pod(
        ref,
        job,
        name,
        {names.LABEL_COMPONENT: names.COORDINATOR, names.LABEL_ATTEMPT: str(attempt)},
        pod_count(topology),
        kueue_group,
    )
    pod["metadata"].setdefault("annotations", {}).update(
        {
            "prometheus.io/scrape": "true",
            "prometheus.io/port": str(settings.metrics_port),
            "prometheus.io/path": "/metrics",
        }
    )
    wanted = job.spec.resources.coordinator
    pod["spec"].update(
        {
            "serviceAccountName": names.coordinator_name(ref.name),
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
                    "resources": {
                        "requests": {"cpu": wanted.cpu, "memory": wanted.memory},
                        "limits": {"memory": wanted.memory},
                    },
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
                _token_volume(ref, tls.COORDINATOR_FILES),
            ],
            **_placement(job),
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


# Defaults of a worker pod's requests, per GPU (per worker process) or per CPU slot.
DEFAULT_CPU_PER_GPU = 4.0
DEFAULT_MEMORY_PER_GPU = 16 * 2**30  # the process, CUDA context, vLLM's host side, loading
DEFAULT_CPU_PER_SLOT = 1.0
DEFAULT_MEMORY_PER_SLOT = 2 * 2**30


def pod_count(topology: Topology) -> int:
    """Pods of one attempt: the coordinator and one worker pod per node."""
    return topology.nodes + 1


def worker_resources(
    job: RLHFJob, topology: Topology, host_bytes_per_device: int
) -> dict[str, Any]:
    """A worker pod's requests and limits: its GPUs (and RDMA devices), and per process
    the job's cpuPerGpu / memoryPerGpu, or defaults sized from the plan (the host
    memory it keeps per device on top of what any worker needs). Memory's limit is its
    request (a worker past it is OOM-killed, never a neighbour); CPU has no limit
    (throttling a rank stalls the whole gang)."""
    res = job.spec.resources
    per = topology.per_node
    if topology.gpu:
        cpu = parse_quantity(res.cpu_per_gpu) if res.cpu_per_gpu else DEFAULT_CPU_PER_GPU
        memory = (
            parse_quantity(res.memory_per_gpu)
            if res.memory_per_gpu
            else DEFAULT_MEMORY_PER_GPU + host_bytes_per_device
        )
    else:
        cpu = parse_quantity(res.cpu_per_gpu) if res.cpu_per_gpu else DEFAULT_CPU_PER_SLOT
        memory = (
            parse_quantity(res.memory_per_gpu) if res.memory_per_gpu else DEFAULT_MEMORY_PER_SLOT
        )
    requests: dict[str, str] = {
        "cpu": cpu_quantity(cpu * per),
        "memory": memory_quantity(memory * per),
    }
    limits: dict[str, str] = {"memory": requests["memory"]}
    if topology.gpu:
        requests[GPU_RESOURCE] = limits[GPU_RESOURCE] = str(per)
    if res.rdma is not None:
        requests[res.rdma.resource_name] = limits[res.rdma.resource_name] = str(res.rdma.count)
    return {"requests": requests, "limits": limits}


def build_worker_pod(
    ref: JobRef,
    job: RLHFJob,
    config: OperatorConfig,
    topology: Topology,
    node: int,
    attempt: int,
    host_bytes_per_device: int = 0,
    kueue_group: str | None = None,
) -> dict[str, Any]:
    """The worker pod of plan node `node`: its launcher runs ranks
    node * per_node .. (node + 1) * per_node - 1, one process per GPU."""
    name = names.worker_name(ref.name, node, attempt)
    settings = WorkerSettings(
        job_id=ref.name,
        coordinator_addr=coordinator_address(ref, attempt),
        world_size=topology.world_size,
        local_world_size=topology.per_node,
        master_addr=names.pod_dns(ref.name, names.worker_name(ref.name, 0, attempt), ref.namespace),
        master_port=DEFAULT_MASTER_PORT,
        device="cuda" if topology.gpu else "cpu",
        token_file=f"{SECRET_DIR}/{names.SECRET_KEY_TOKEN}",
        socket_ifname=config.socket_ifname,
        log_level=config.log_level,
        tls_dir=SECRET_DIR,
    )
    env = settings.for_rank(node * topology.per_node, node_rank=node).to_env()
    if topology.gpu:
        env.update(
            {"NCCL_DEBUG": "WARN", "TORCH_NCCL_ASYNC_ERROR_HANDLING": "1", "NCCL_IB_DISABLE": "0"}
        )
    env.update(config.extra_worker_env)
    labels = {names.LABEL_COMPONENT: names.WORKER, names.LABEL_ATTEMPT: str(attempt)}
    pod = _base_pod(ref, job, name, labels, pod_count(topology), kueue_group)
    pod["metadata"].setdefault("annotations", {})[names.ANNOTATION_NODE] = str(node)
    shm: dict[str, Any] = {"medium": "Memory"}
    if config.shm_size:
        shm["sizeLimit"] = config.shm_size
    security = _container_security()
    if job.spec.resources.rdma is not None:
        # Verbs pin (mlock) NCCL's buffers; nothing else is added back.
        security["capabilities"]["add"] = ["IPC_LOCK"]
    container: dict[str, Any] = {
        "name": names.WORKER,
        "image": job.spec.resources.images.worker or config.worker_image,
        "command": launcher_command("python"),
        **_exit_reason_fields(env),
        "resources": worker_resources(job, topology, host_bytes_per_device),
        "volumeMounts": [
            {"name": SHM_VOLUME, "mountPath": "/dev/shm"},
            {"name": TOKEN_VOLUME, "mountPath": SECRET_DIR, "readOnly": True},
        ],
        "securityContext": security,
    }
    # Node 0's rank 0 listens there; every worker pod declares it, so all have one shape.
    container["ports"] = [
        {"name": names.RENDEZVOUS_PORT_NAME, "containerPort": DEFAULT_MASTER_PORT}
    ]
    res = job.spec.resources
    pod["spec"].update(
        {
            "automountServiceAccountToken": False,  # workers never call the API
            "containers": [container],
            "volumes": [
                {"name": SHM_VOLUME, "emptyDir": shm},
                _token_volume(ref, tls.WORKER_FILES),
            ],
            **_placement(job),
        }
    )
    if res.affinity:
        pod["spec"]["affinity"] = dict(res.affinity)
    if res.pod_template:
        pod = _hardened(merge(pod, res.pod_template), pod, config)
    return pod


def _hardened(
    merged: dict[str, Any], built: dict[str, Any], config: OperatorConfig
) -> dict[str, Any]:
    """The pod after the user's template, with the operator's identity and hardening put
    back: its name, namespace, owner, labels and annotations win over the template's,
    and every container (a sidecar or init container the template added included)
    gets no privilege escalation and drops ALL capabilities, and the pod runs as
    non-root under the runtime's seccomp profile, wherever the template left these
    unset. What the template sets explicitly was checked by the pod policy
    (`api.pod_policy`)."""
    meta = merged["metadata"]
    for key in ("name", "namespace", "ownerReferences"):
        meta[key] = built["metadata"][key]
    for part in ("labels", "annotations"):
        ours = built["metadata"].get(part) or {}
        if ours or meta.get(part):
            meta[part] = {**(meta.get(part) or {}), **ours}
    spec = merged["spec"]
    pod_security = spec.get("securityContext") or {}
    for key, value in _pod_security().items():
        if pod_security.get(key) is None:
            pod_security[key] = value
    spec["securityContext"] = pod_security
    if spec.get("automountServiceAccountToken") is None:
        spec["automountServiceAccountToken"] = False
    for kind in ("initContainers", "containers", "ephemeralContainers"):
        for container in spec.get(kind) or []:
            security = container.get("securityContext") or {}
            if security.get("allowPrivilegeEscalation") is None:
                security["allowPrivilegeEscalation"] = False
            caps = security.get("capabilities") or {}
            drop = [str(c).upper() for c in caps.get("drop") or []]
            if "ALL" not in drop and not config.pod_policy.allow_privileged:
                caps["drop"] = ["ALL", *[c for c in caps.get("drop") or [] if c != "ALL"]]
            security["capabilities"] = caps
            container["securityContext"] = security
    return merged


def build_worker_pods(
    ref: JobRef,
    job: RLHFJob,
    config: OperatorConfig,
    topology: Topology,
    attempt: int,
    host_bytes_per_device: int = 0,
    kueue_group: str | None = None,
) -> list[dict[str, Any]]:
    return [
        build_worker_pod(
            ref, job, config, topology, node, attempt, host_bytes_per_device, kueue_group
        )
        for node in range(topology.nodes)
    ]


def build_children(
    ref: JobRef,
    job: RLHFJob,
    config: OperatorConfig,
    topology: Topology,
    attempt: int,
    token: str,
    host_bytes_per_device: int = 0,
    kueue_group: str | None = None,
    certificates: tls.JobCertificates | None = None,
) -> list[dict[str, Any]]:
    """Everything one attempt of the job runs with besides its ConfigMap (made when
    it is planned): Secret, Service, the coordinator's RBAC, the NetworkPolicy, the
    gang's PodGroup if any, then the pods (coordinator first). What the operator creates and
    `rlhfctl manifests` prints."""
    objects = [build_secret(ref, token)]
    if certificates is not None:
        objects.append(build_tls_secret(ref, certificates))
    objects += [build_service(ref), *build_coordinator_rbac(ref, job)]
    if config.network_policy:
        objects.append(build_network_policy(ref, config))
    group = build_pod_group(ref, job, pod_count(topology))
    if group is not None:
        objects.append(group)
    objects.append(build_coordinator_pod(ref, job, config, topology, attempt, kueue_group))
    objects += build_worker_pods(
        ref, job, config, topology, attempt, host_bytes_per_device, kueue_group
    )
    return objects
