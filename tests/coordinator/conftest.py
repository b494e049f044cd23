"""Helpers for the control-plane tests: a coordinator in the test process and
workers as real subprocesses, started with exactly `worker_command` and `WorkerSettings.to_env`."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from rlhf_operator.contract.launch import WorkerSettings, worker_command
from rlhf_operator.controlplane.tokens import new_token
from rlhf_operator.coordinator.server import Coordinator, CoordinatorConfig
from rlhf_operator.coordinator.state import Report

HERE = Path(__file__).resolve().parent
# Short on purpose, so that a frozen worker is found within seconds in tests; but
# not too short: `import torch` holds the GIL (and so starves the heartbeat
# thread) for seconds on a busy 2-core machine. Tests of the timeout pass less.
HEARTBEAT_INTERVAL_S = 0.2
HEARTBEAT_TIMEOUT_S = 10.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class LocalWorkers:
    """Worker subprocesses of one job; killed at the end if still running."""

    def __init__(self, coordinator_addr: str, job_id: str, token: str, world_size: int) -> None:
        self.launch = WorkerSettings(
            job_id=job_id,
            coordinator_addr=coordinator_addr,
            world_size=world_size,
            master_addr="127.0.0.1",
            master_port=free_port(),
            token=token,
            connect_timeout_s=20,
            socket_ifname="lo",
            threads_per_worker=1,
            handler_modules=("worker_handlers",),
        )
        self.procs: dict[int, subprocess.Popen[str]] = {}

    def start(self, ranks: range | list[int] | None = None) -> None:
        for rank in ranks if ranks is not None else range(self.launch.world_size):
            if rank in self.procs:  # a restart: reap the old process first
                self.procs[rank].kill()
                self.procs[rank].communicate(timeout=10)
            env = {
                **os.environ,
                **self.launch.for_rank(
                    rank, local_rank=rank, local_world_size=self.launch.world_size
                ).to_env(),
            }
            env["PYTHONPATH"] = os.pathsep.join(p for p in (str(HERE), env.get("PYTHONPATH")) if p)
            self.procs[rank] = subprocess.Popen(
                worker_command(),
                env=env,
                stderr=subprocess.PIPE,
                stdout=subprocess.DEVNULL,
                text=True,
            )

    def kill(self, rank: int, sig: int = signal.SIGKILL) -> None:
        self.procs[rank].send_signal(sig)

    def wait_all(self, timeout_s: float) -> dict[int, tuple[int, str]]:
        """Exit status and stderr of every worker (fails the test if one hangs)."""
        out = {}
        for rank, proc in self.procs.items():
            _, err = proc.communicate(timeout=timeout_s)
            out[rank] = (proc.returncode, err)
        return out

    def cleanup(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.kill()
            proc.communicate(timeout=10)


@pytest.fixture
def make_job() -> Iterator[object]:
    """make_job(world_size) -> (coordinator, workers): both torn down after the test."""
    started: list[tuple[Coordinator, LocalWorkers]] = []

    def make(
        world_size: int,
        start_workers: bool = True,
        heartbeat_timeout_s: float = HEARTBEAT_TIMEOUT_S,
        on_report: Callable[[Report], None] | None = None,
    ) -> tuple[Coordinator, LocalWorkers]:
        token = new_token()
        config = CoordinatorConfig(
            job_id="job-test",
            token=token,
            world_size=world_size,
            heartbeat_interval_s=HEARTBEAT_INTERVAL_S,
            heartbeat_timeout_s=heartbeat_timeout_s,
        )
        coordinator = Coordinator(config, on_report=on_report)
        address = coordinator.start()
        workers = LocalWorkers(address, config.job_id, token, world_size)
        started.append((coordinator, workers))
        if start_workers:
            workers.start()
        return coordinator, workers

    yield make
    for coordinator, workers in started:
        coordinator.stop()
        workers.cleanup()
