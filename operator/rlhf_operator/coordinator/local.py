"""Local mode: one job on this machine, without Kubernetes (`rlhfctl run`).

The coordinator runs in this process; the node's workers are started as a worker
pod starts them: one launcher with exactly the command and environment a worker pod
gets (`contract.launch`: `launcher_command`, `WorkerSettings.to_env`), which starts
one worker process per slot, on CPU with gloo when there is no GPU. A worker that dies fails the iteration (the control plane notices
its broken stream at once); all workers are then restarted and the job resumes
from its newest complete checkpoint, up to `runPolicy.backoffLimit` times.
Ctrl-C finishes the running iteration, writes a checkpoint and stops; a
second Ctrl-C stops at once (the last complete checkpoint still resumes).
"""

from __future__ import annotations

import math
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from rlhf_operator.api.job import RLHFJob
from rlhf_operator.contract import launch
from rlhf_operator.contract.launch import SettingsError, WorkerSettings, launcher_command
from rlhf_operator.contract.plan import Plan
from rlhf_operator.controlplane import tls
from rlhf_operator.controlplane.tokens import new_token
from rlhf_operator.coordinator.errors import CommandFailed, CommandTimeout, WorkerLost
from rlhf_operator.coordinator.executor import JobRunner
from rlhf_operator.coordinator.job_metrics import JobMetrics
from rlhf_operator.coordinator.outputs import IterationRecord, OutputDir, format_progress
from rlhf_operator.coordinator.server import Coordinator, CoordinatorConfig

TLS_DIR = "tls"  # under the output directory


class JobFailed(RuntimeError):
    """The job cannot finish (the message says why, in one line)."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class LocalRun:
    job: RLHFJob
    plan: Plan
    base_dir: Path
    output: OutputDir
    metrics_port: int | None = 0  # None: no /metrics endpoint
    heartbeat_timeout_s: float = 60.0
    stream: TextIO = sys.stderr
    on_iteration: Callable[[IterationRecord], None] | None = None
    extra_env: dict[str, str] = field(default_factory=dict)
    restarts: int = 0
    stop_requested: bool = False
    _workers: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def world_size(self) -> int:
        return int(self.job.spec.device_count)

    def run(self) -> dict[str, Any]:
        """Run to the end (resuming from a checkpoint if there is one); returns the summary.

        summary.json is written however the run ends: Succeeded, Failed (with the
        one-line reason) or Stopped (Ctrl-C).
        """
        self.output.create()
        metrics = JobMetrics(self.job.metadata.name)
        port = metrics.serve(self.metrics_port) if self.metrics_port is not None else None
        if port is not None:
            self._say(f"metrics: http://127.0.0.1:{port}/metrics")
        started = time.monotonic()
        status, error = "Failed", None
        previous = signal.signal(signal.SIGINT, self._interrupt)
        try:
            self._attempts(metrics, started)
            status = "Succeeded"
        except JobFailed as err:
            error = str(err)
            raise
        except KeyboardInterrupt:
            status = "Stopped"
            raise
        finally:
            signal.signal(signal.SIGINT, previous)
            self._stop_workers()
            summary = self._summary(time.monotonic() - started, status, error)
            self.output.write_summary(summary)
        return summary

    def _attempts(self, metrics: JobMetrics, started: float) -> None:
        """Run, restarting all workers after a lost one, up to the job's backoff limit."""
        while True:
            try:
                self._attempt(metrics, started)
                return
            except CommandFailed as err:
                # A handler's error is deterministic (bad data, a reward function
                # that raises): restarting would only repeat it.
                raise JobFailed(str(err)) from None
            except (WorkerLost, CommandTimeout) as err:
                if self.stop_requested:
                    raise JobFailed("stopped by Ctrl-C") from None
                self.restarts += 1
                limit = int(self.job.spec.run_policy.backoff_limit)
                if self.restarts > limit:
                    raise JobFailed(
                        f"{err} (restarted {self.restarts - 1} time(s); backoffLimit is {limit})"
                    ) from None
                self._say(
                    f"worker failure: {err}; restarting from the last checkpoint "
                    f"({self.restarts}/{limit})"
                )

    def _attempt(self, metrics: JobMetrics, started: float) -> None:
        token = new_token()
        config = CoordinatorConfig(
            job_id=self.job.metadata.name,
            token=token,
            world_size=self.world_size,
            heartbeat_interval_s=2.0,
            heartbeat_timeout_s=self.heartbeat_timeout_s,
            tls_dir=str(self._certificates()),
        )
        total = int(self.job.spec.training.iterations)
        first_iteration: list[int] = []

        def on_record(record: IterationRecord, checkpoint: Path | None) -> None:
            first_iteration[:] = first_iteration or [record.iteration]
            metrics.observe(record)
            if self.on_iteration is not None:
                self.on_iteration(record)
            self._progress(record, total, started, first_iteration[0])

        with Coordinator(config) as coordinator:
            self._start_workers(coordinator.address, token)
            runner = JobRunner(coordinator, self.job, self.plan, self.output, self.base_dir)
            start = runner.setup()
            if not runner.run_to_end(start, on_record, lambda: self.stop_requested):
                raise KeyboardInterrupt
            runner.shutdown()

    def _start_workers(self, address: str, token: str) -> None:
        """The node's launcher (`launcher_command`), as in a worker pod: it starts one
        worker per slot, each logging to logs/worker-<rank>.log."""
        self._stop_workers()
        try:
            settings = self._worker_settings(address, token)
        except SettingsError as err:  # e.g. a bad RLHF_LOG_LEVEL in this console
            raise JobFailed(f"cannot start the workers: {err}") from None
        self.output.logs.mkdir(parents=True, exist_ok=True)
        env = {
            **os.environ,
            # Huge pages for torch's CPU allocations: fresh shards (transient copies
            # made by reallocation) fill about 4x faster than on 4 KiB pages.
            "THP_MEM_ALLOC_ENABLE": "1",
            **self.extra_env,
            **settings.to_env(),
            launch.LOG_DIR: str(self.output.logs),
        }
        log = (self.output.logs / "launcher.log").open("ab")
        # Own session: a Ctrl-C in the terminal reaches the coordinator only,
        # which then stops the workers in order.
        self._workers.append(
            subprocess.Popen(
                launcher_command(),
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        )
        log.close()

    def _certificates(self) -> Path:
        """The job's CA and certificates, as in a cluster (`controlplane.tls`), made for
        each start in the output directory (owner-only)."""
        return tls.make_job_certificates(self.job.metadata.name).write(self.output.root / TLS_DIR)

    def _worker_settings(self, address: str, token: str) -> WorkerSettings:
        """What every worker of this start is launched with (a fresh rendezvous port)."""
        return WorkerSettings(
            job_id=self.job.metadata.name,
            coordinator_addr=address,
            world_size=self.world_size,
            local_world_size=self.world_size,  # one node: every rank in one launcher
            master_addr="127.0.0.1",
            master_port=free_port(),
            # CPU slots (resources.local) run on gloo; a job that asks for GPUs gets one
            # per worker, rank r on GPU r of this machine, over NCCL.
            device="cpu" if self.job.spec.resources.local is not None else "cuda",
            token=token,
            connect_timeout_s=120.0,
            socket_ifname="lo",
            threads_per_worker=max(1, (os.cpu_count() or 1) // self.world_size),
            # The console's log level reaches the workers, as a variable of its own would.
            log_level=(os.environ.get(launch.LOG_LEVEL, "").strip() or "INFO").upper(),
            tls_dir=str(self.output.root / TLS_DIR),
        )

    def _stop_workers(self) -> None:
        for proc in self._workers:
            if proc.poll() is None:
                proc.terminate()
        deadline = time.monotonic() + 10
        for proc in self._workers:
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self._workers = []

    @property
    def worker_pids(self) -> list[int]:
        return [p.pid for p in self._workers]

    def _interrupt(self, signum: int, frame: Any) -> None:
        if self.stop_requested:
            raise KeyboardInterrupt
        self.stop_requested = True
        self._say("stopping after this iteration (Ctrl-C again to stop now)")

    def _progress(self, record: IterationRecord, total: int, started: float, start: int) -> None:
        done = record.iteration - start + 1
        elapsed = time.monotonic() - started
        eta = elapsed / done * (total - record.iteration) if done else math.inf
        self._say(
            format_progress(
                record.iteration,
                total,
                record.reward_mean,
                record.kl,
                record.tokens_per_second,
                eta,
            )
        )

    def _say(self, line: str) -> None:
        print(line, file=self.stream, flush=True)

    def _summary(self, seconds: float, status: str, error: str | None) -> dict[str, Any]:
        records = self.output.read_metrics()
        rewards = [r["reward_mean"] for r in records]
        return {
            "job": self.job.metadata.name,
            "algorithm": self.job.spec.algorithm.name,
            "status": status,
            "error": error,
            "iterations": len(records),
            "restarts": self.restarts,
            "seconds": round(seconds, 3),
            "reward_first": rewards[0] if rewards else None,
            "reward_last": rewards[-1] if rewards else None,
            "reward_max": max(rewards) if rewards else None,
            "tokens_per_second_median": _median_or_none([r["tokens_per_second"] for r in records]),
            "samples_per_second_median": _median_or_none(
                [r["samples_per_second"] for r in records]
            ),
            "plan": {
                "strategy": self.plan.strategy,
                "iteration_seconds_estimated": self.plan.iteration_seconds,
            },
            "checkpoints": str(self.output.checkpoints),
            "export": str(self.output.export) if self.output.export.exists() else None,
        }


def _median_or_none(values: list[float]) -> float | None:
    return statistics.median(values) if values else None
