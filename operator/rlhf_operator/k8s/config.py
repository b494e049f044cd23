"""The operator's own settings (flags or RLHF_OPERATOR_* environment variables;
the Helm chart sets the latter)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field

from ..api.pod_policy import DEFAULT_POD_POLICY, PodPolicy
from ..contract.launch import LOG_LEVELS

DEFAULT_IMAGE = "ghcr.io/rlhf-operator/rlhf-operator:0.1.0"
DEFAULT_WORKER_IMAGE = "ghcr.io/rlhf-operator/rlhf-worker:0.1.0"


@dataclass(frozen=True)
class OperatorConfig:
    coordinator_image: str = DEFAULT_IMAGE
    """Image of coordinator pods when the job names none (the operator's own image)."""
    worker_image: str = DEFAULT_WORKER_IMAGE
    """Image of worker pods when the job names none."""
    namespaces: tuple[str, ...] = ()
    """Namespaces to watch; empty: all (cluster-wide)."""
    metrics_port: int = 8080
    """Port of /metrics (0: no metrics server, e.g. in tests)."""
    health_port: int = 8081
    """Port of the liveness endpoint /healthz (0: none)."""
    log_level: str = "INFO"
    """The operator's, and every pod's it starts (one of `contract.launch.LOG_LEVELS`)."""
    resync_seconds: float = 10.0
    """How often every job is reconciled even without a change (pod phases, deadlines)."""
    retry_seconds: float = 15.0
    """Delay before retrying a job that waits (GPUs, pods still terminating)."""
    failure_settle_seconds: float = 5.0
    """After a pod fails, how long to wait for the rest of the gang to end before
    restarting, so that the restart names the pod that failed first."""
    output_dir: str = "/var/lib/rlhf"
    """The coordinator's output directory when the job sets no checkpoint path."""
    shm_size: str | None = None
    """Size limit of each worker's /dev/shm memory volume (None: unlimited)."""
    socket_ifname: str = "eth0"
    """Network interface for NCCL and gloo sockets inside pods."""
    extra_worker_env: dict[str, str] = field(default_factory=dict)
    pod_policy: PodPolicy = DEFAULT_POD_POLICY
    """What a job's podTemplate may add (`api.pod_policy`; chart values `podPolicy`)."""
    network_policy: bool = True
    """A NetworkPolicy per job: only its own pods reach its pods (metrics aside)."""
    metrics_namespace: str | None = None
    """The namespace allowed to scrape the coordinators' metrics (Prometheus's)."""

    def __post_init__(self) -> None:
        if self.log_level not in LOG_LEVELS:
            raise ValueError(
                f"RLHF_OPERATOR_LOG_LEVEL={self.log_level!r} must be one of {', '.join(LOG_LEVELS)}"
            )

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> OperatorConfig:
        d = cls()
        namespaces = tuple(
            n.strip() for n in environ.get("RLHF_OPERATOR_NAMESPACES", "").split(",") if n.strip()
        )
        return cls(
            coordinator_image=environ.get("RLHF_OPERATOR_COORDINATOR_IMAGE", d.coordinator_image),
            worker_image=environ.get("RLHF_OPERATOR_WORKER_IMAGE", d.worker_image),
            namespaces=namespaces,
            metrics_port=int(environ.get("RLHF_OPERATOR_METRICS_PORT", d.metrics_port)),
            health_port=int(environ.get("RLHF_OPERATOR_HEALTH_PORT", d.health_port)),
            log_level=environ.get("RLHF_OPERATOR_LOG_LEVEL", d.log_level).upper(),
            resync_seconds=float(environ.get("RLHF_OPERATOR_RESYNC_SECONDS", d.resync_seconds)),
            retry_seconds=float(environ.get("RLHF_OPERATOR_RETRY_SECONDS", d.retry_seconds)),
            failure_settle_seconds=float(
                environ.get("RLHF_OPERATOR_FAILURE_SETTLE_SECONDS", d.failure_settle_seconds)
            ),
            output_dir=environ.get("RLHF_OPERATOR_OUTPUT_DIR", d.output_dir),
            shm_size=environ.get("RLHF_OPERATOR_SHM_SIZE") or None,
            socket_ifname=environ.get("RLHF_OPERATOR_SOCKET_IFNAME", d.socket_ifname),
            pod_policy=_pod_policy(environ.get("RLHF_OPERATOR_POD_POLICY", "")),
            network_policy=environ.get("RLHF_OPERATOR_NETWORK_POLICY", "true").lower()
            not in ("false", "0", "no"),
            metrics_namespace=environ.get("RLHF_OPERATOR_METRICS_NAMESPACE") or None,
        )


def _pod_policy(text: str) -> PodPolicy:
    try:
        return PodPolicy.from_json(text)
    except ValueError as err:  # json's errors are ValueErrors too
        raise ValueError(f"RLHF_OPERATOR_POD_POLICY: {err}") from None
