"""Deterministic names and labels of a job's child objects.

Every child's name is a function of the job's name (and, for pods, the node and
the attempt), so that a handler run twice, or by a restarted operator, finds what
the first run created instead of creating it again (a create answers 409 and is
done). Pod names carry the attempt (`status.restarts` when they were created): a
pod of an earlier attempt stuck Terminating on a lost node never holds a name the
restart needs. Job names are at most 45 characters (the API checks it), so every
name here is a valid DNS-1123 label (<= 63 characters) and can be a pod hostname
for attempts below 100000.
"""

from __future__ import annotations

from ..api import GROUP

MANAGED_BY = "app.kubernetes.io/managed-by"
MANAGER = "rlhf-operator"
LABEL_JOB = f"{GROUP}/job"
LABEL_COMPONENT = f"{GROUP}/component"  # coordinator | worker
# The plan's node index of a worker pod. An annotation, not a label: Kueue tells a pod
# group's shapes (its Workload's PodSets) apart by their labels, among other fields,
# and every worker pod must have the one shape.
ANNOTATION_NODE = f"{GROUP}/node"
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


def network_policy_name(job: str) -> str:
    return job


def tls_secret_name(job: str) -> str:
    return f"{job}-tls"


def coordinator_name(job: str) -> str:
    """The coordinator's ServiceAccount, Role and RoleBinding (one for every attempt)."""
    return f"{job}-coordinator"


def coordinator_pod_name(job: str, attempt: int) -> str:
    return f"{job}-coordinator-{attempt}"


def worker_name(job: str, node: int, attempt: int) -> str:
    """The worker pod of the plan's node `node` (all of that node's ranks)."""
    return f"{job}-worker-{node}-{attempt}"


def pod_group_name(job: str) -> str:
    """The gang's PodGroup (Volcano, scheduler-plugins)."""
    return job


def kueue_group_name(job: str, attempt: int) -> str:
    """Kueue's pod group (its Workload): one per start of the job, kept across restarts
    (replacement pods of a group keep its quota) and new after a suspension (the
    suspended group's Workload finished, its quota released)."""
    return f"{job}-{attempt}"


def pod_dns(job: str, pod: str, namespace: str) -> str:
    """A pod's stable DNS name through the headless Service (hostname.subdomain.ns.svc)."""
    return f"{pod}.{service_name(job)}.{namespace}.svc"


def job_labels(job: str) -> dict[str, str]:
    return {MANAGED_BY: MANAGER, LABEL_JOB: job}
