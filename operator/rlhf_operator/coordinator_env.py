"""The coordinator process's contract: how it is started and what it reads.

One job's coordinator runs `python -m rlhf_operator.coordinator` (in its own pod
on Kubernetes, or inside `rlhfctl run` in local mode) and takes everything from
these environment variables. The operator's pod builder writes them
(`CoordinatorSettings.to_env`), the coordinator reads them
(`CoordinatorSettings.from_env`): one definition, so the two cannot drift.

On Kubernetes the job manifest and the plan come from the job's ConfigMap
(mounted at CONFIG_DIR as `job.yaml` and `plan.json`), the control-plane token
and the job's certificates from its Secret (mounted at SECRET_DIR as `token`, `ca.crt`,
`coordinator.crt`, `coordinator.key`), and checkpoints go to
OUTPUT_DIR (the job's `spec.checkpoint.path`, on a shared volume).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

JOB_NAME = "RLHF_JOB_NAME"
JOB_NAMESPACE = "RLHF_JOB_NAMESPACE"
JOB_FILE = "RLHF_JOB_FILE"
PLAN_FILE = "RLHF_PLAN_FILE"
TOKEN_FILE = "RLHF_TOKEN_FILE"
OUTPUT_DIR = "RLHF_OUTPUT_DIR"
CONTROL_PORT = "RLHF_CONTROL_PORT"
METRICS_PORT = "RLHF_METRICS_PORT"
STATUS_SINK = "RLHF_STATUS_SINK"  # "kubernetes": patch RLHFJob status; "none": local mode
WORKER_HOSTS = "RLHF_WORKER_HOSTS"  # comma-separated worker pod DNS names, rank order
TLS_DIR = "RLHF_TLS_DIR"  # the job's CA and the coordinator's certificate (controlplane.tls)

CONFIG_DIR = "/etc/rlhf"
SECRET_DIR = "/var/run/secrets/rlhf"
DEFAULT_CONTROL_PORT = 50051
DEFAULT_METRICS_PORT = 9090
DEFAULT_MASTER_PORT = 29500


@dataclass(frozen=True)
class CoordinatorSettings:
    job_name: str
    namespace: str
    job_file: str = f"{CONFIG_DIR}/job.yaml"
    plan_file: str = f"{CONFIG_DIR}/plan.json"
    token_file: str = f"{SECRET_DIR}/token"
    output_dir: str = "/var/lib/rlhf"
    control_port: int = DEFAULT_CONTROL_PORT
    metrics_port: int = DEFAULT_METRICS_PORT
    status_sink: str = "kubernetes"
    tls_dir: str = SECRET_DIR
    """ca.crt, coordinator.crt and coordinator.key: the control plane serves mutual TLS."""

    def to_env(self) -> dict[str, str]:
        return {
            JOB_NAME: self.job_name,
            JOB_NAMESPACE: self.namespace,
            JOB_FILE: self.job_file,
            PLAN_FILE: self.plan_file,
            TOKEN_FILE: self.token_file,
            OUTPUT_DIR: self.output_dir,
            CONTROL_PORT: str(self.control_port),
            METRICS_PORT: str(self.metrics_port),
            STATUS_SINK: self.status_sink,
            TLS_DIR: self.tls_dir,
        }

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> CoordinatorSettings:
        """Read the settings; raises ValueError naming the variable that is missing or wrong."""
        missing = [v for v in (JOB_NAME, JOB_NAMESPACE) if not environ.get(v)]
        if missing:
            raise ValueError(f"environment variable {missing[0]} is not set")
        ports = {}
        for var, default in (
            (CONTROL_PORT, DEFAULT_CONTROL_PORT),
            (METRICS_PORT, DEFAULT_METRICS_PORT),
        ):
            text = environ.get(var, str(default))
            if not text.isdigit() or not 0 <= int(text) < 65536:
                raise ValueError(f"environment variable {var} must be a port number, got {text!r}")
            ports[var] = int(text)
        sink = environ.get(STATUS_SINK, "kubernetes")
        if sink not in ("kubernetes", "none"):
            raise ValueError(
                f"environment variable {STATUS_SINK} must be kubernetes or none, got {sink!r}"
            )
        defaults = cls(job_name="", namespace="")
        return cls(
            job_name=environ[JOB_NAME],
            namespace=environ[JOB_NAMESPACE],
            job_file=environ.get(JOB_FILE, defaults.job_file),
            plan_file=environ.get(PLAN_FILE, defaults.plan_file),
            token_file=environ.get(TOKEN_FILE, defaults.token_file),
            output_dir=environ.get(OUTPUT_DIR, defaults.output_dir),
            control_port=ports[CONTROL_PORT],
            metrics_port=ports[METRICS_PORT],
            status_sink=sink,
            tls_dir=environ.get(TLS_DIR, defaults.tls_dir),
        )
