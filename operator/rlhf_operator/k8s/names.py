"""Deterministic names and labels of a job's child objects.

Every child's name is a function of the job's name (and the worker's rank), so
that a handler run twice, or by a restarted operator, finds what the first run
created instead of creating it again (a create answers 409 and is done).
Job names are at most 45 characters (the API checks it), so every name here is
a valid DNS-1123 label (<= 63 characters) and can be a pod hostname.
"""

from __future__ import annotations

from ..api import GROUP

MANAGED_BY = "app.kubernetes.io/managed-by"
MANAGER = "rlhf-operator"
LABEL_JOB = f"{GROUP}/job"
LABEL_COMPONENT = f"{GROUP}/component"  # coordinator | worker
LABEL_RANK = f"{GROUP}/rank"
LABEL_NODE_SLOT = f"{GROUP}/node-slot"  # the plan's node index of a worker
LABEL_ATTEMPT = f"{GROUP}/attempt"  # status.restarts when the pod was created

COORDINATOR = "coordinator"
WORKER = "worker"

CONFIG_KEY_JOB = "job.yaml"
CONFIG_KEY_PLAN = "plan.json"
SECRET_KEY_TOKEN = "token"

CONTROL_PORT_NAME = "control"
METRICS_PORT_NAME = "metrics"
RENDEZVOUS_PORT_NAME = "rendezvous"


def service_name(job: str) -> str:
    """The headless Service: the DNS subdomain of every pod of the job."""
    return job


def config_map_name(job: str) -> str:
    return f"{job}-config"


def secret_name(job: str) -> str:
    return f"{job}-token"


def coordinator_name(job: str) -> str:
    """The coordinator's Pod, ServiceAccount, Role and RoleBinding."""
    return f"{job}-coordinator"


def worker_name(job: str, rank: int) -> str:
    return f"{job}-worker-{rank}"


def pod_group_name(job: str) -> str:
    return job


def pod_dns(job: str, pod: str, namespace: str) -> str:
    """A pod's stable DNS name through the headless Service (hostname.subdomain.ns.svc)."""
    return f"{pod}.{service_name(job)}.{namespace}.svc"


def job_labels(job: str) -> dict[str, str]:
    return {MANAGED_BY: MANAGER, LABEL_JOB: job}
