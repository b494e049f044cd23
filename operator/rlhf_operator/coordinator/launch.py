"""The launch contract of a worker process: its command and its environment, per rank.

Pure functions, shared by local mode (which spawns the processes itself, merging
`worker_env` over its own environment) and the Kubernetes pod builders (which
put `worker_command` and `worker_env` into each worker pod's container). What
each variable means is documented in `rlhf_worker.__main__`.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

from ..controlplane import environment as env

WORKER_MODULE = "rlhf_worker"


@dataclass(frozen=True)
class WorkerLaunch:
    """What every worker of one job shares; `worker_env` adds the per-rank part."""

    job_id: str
    coordinator_addr: str
    """host:port of the coordinator's control plane."""
    world_size: int
    master_addr: str
    """torch.distributed rendezvous host (rank 0's address)."""
    master_port: int
    device: str = "cpu"
    """cpu (gloo) or cuda (nccl)."""
    token: str | None = None
    """The job's token as a value (local mode)..."""
    token_file: str | None = None
    """...or the path of a file holding it (a mounted Secret in Kubernetes)."""
    connect_timeout_s: float | None = None
    """How long a worker keeps trying to reach the coordinator (worker default if None)."""
    socket_ifname: str | None = None
    """Network interface for gloo/NCCL sockets; "lo" in local mode."""
    threads_per_worker: int | None = None
    """OMP_NUM_THREADS for each worker (local mode: cores / workers)."""
    handler_modules: tuple[str, ...] = ()
    """Extra handler modules for the worker (extension and test hook)."""
    log_level: str | None = None


def worker_command(python: str = sys.executable) -> list[str]:
    """The worker process's command line (a pod uses its image's `python`)."""
    return [python, "-m", WORKER_MODULE]


def worker_env(
    launch: WorkerLaunch, rank: int, local_rank: int = 0, node_rank: int = 0
) -> dict[str, str]:
    """The environment variables of the worker with global rank `rank`."""
    if not 0 <= rank < launch.world_size:
        raise ValueError(f"rank {rank} is out of range for world size {launch.world_size}")
    if (launch.token is None) == (launch.token_file is None):
        raise ValueError("give exactly one of token and token_file")
    if launch.device not in env.DEVICES:
        raise ValueError(f"device must be one of {', '.join(env.DEVICES)}, got {launch.device!r}")
    out = {
        env.JOB_ID: launch.job_id,
        env.COORDINATOR_ADDR: launch.coordinator_addr,
        env.RANK: str(rank),
        env.WORLD_SIZE: str(launch.world_size),
        env.LOCAL_RANK: str(local_rank),
        env.NODE_RANK: str(node_rank),
        env.MASTER_ADDR: launch.master_addr,
        env.MASTER_PORT: str(launch.master_port),
        env.DEVICE: launch.device,
        # Logs reach `kubectl logs` / the local console as they are written.
        "PYTHONUNBUFFERED": "1",
    }
    if launch.token is not None:
        out[env.TOKEN] = launch.token
    if launch.token_file is not None:
        out[env.TOKEN_FILE] = launch.token_file
    if launch.connect_timeout_s is not None:
        out[env.CONNECT_TIMEOUT] = f"{launch.connect_timeout_s:g}"
    if launch.socket_ifname is not None:
        out["GLOO_SOCKET_IFNAME"] = launch.socket_ifname
        out["NCCL_SOCKET_IFNAME"] = launch.socket_ifname
    if launch.threads_per_worker is not None:
        out["OMP_NUM_THREADS"] = str(launch.threads_per_worker)
    if launch.handler_modules:
        out[env.HANDLERS] = ",".join(launch.handler_modules)
    if launch.log_level is not None:
        out[env.LOG_LEVEL] = launch.log_level
    return out
