"""`python -m rlhf_worker.launcher`: one pod's worker processes, one per GPU.

A worker pod holds a node's GPUs (or an aligned block of them), so that NCCL
can use NVLink/P2P and shared memory between the ranks of a node; that needs
the ranks in one container. This launcher is the pod's main process. It reads
the pod's settings (`WorkerSettings.from_env`: RANK is the pod's first rank,
LOCAL_WORLD_SIZE its number of processes), starts `python -m rlhf_worker` for
each of its ranks with `for_rank(RANK + i, local_rank=i)`, and then:

- forwards SIGTERM and SIGINT to every worker (Kubernetes stops a pod by
  signalling its main process only) and waits for them;
- when a worker fails, stops the others (SIGTERM, SIGKILL after
  `GRACE_SECONDS`) and exits with that worker's code, leaving as the pod's
  termination message `rank R: <the worker's own reason>` (its termination
  file, else the last line it printed), so that the operator's event names
  the rank that failed first, as it did with a pod per rank. A worker killed
  by a signal counts as exit code 128 + the signal (as a shell reports it). A
  worker that only lost the coordinator (`exits.PEER_LOST`) is a consequence:
  the launcher reports the cause when one failed at the same time.
- exits 0 once every worker has exited 0 (after the coordinator's Shutdown).

Each worker gets `PR_SET_PDEATHSIG`: if the launcher itself is killed
(SIGKILL, the OOM killer) its workers die with it, as the processes of a
container do when its main process ends. Workers' output goes to the
launcher's own (`kubectl logs`; every line carries its rank), or, when
`RLHF_LOG_DIR` is set (local mode), to `worker-<rank>.log` there.

`RLHF_WORKER_COMMAND` (shell words) replaces each worker's command line, to
wrap the workers in a profiler (`nsys profile python -m rlhf_worker`) or, in
tests, to run a stand-in; every worker still gets its own settings.

Local mode (`rlhfctl run`) and the test pod executor run this same launcher.
"""

from __future__ import annotations

import collections
import ctypes
import os
import shlex
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from rlhf_operator.contract.launch import (
    LOG_DIR,
    WORKER_COMMAND,
    SettingsError,
    WorkerSettings,
    worker_command,
)
from rlhf_operator.controlplane import exits

from .agent import EXIT_CONFIG

GRACE_SECONDS = 20.0
"""How long the workers get to end after SIGTERM (Kubernetes gives the pod 30 s)."""
POLL_SECONDS = 0.1
COPY_SECONDS = 5.0
"""How long the ended workers' last output may take to be copied."""
_PR_SET_PDEATHSIG = 1


@dataclass
class Worker:
    rank: int
    process: subprocess.Popen[bytes]
    termination_log: Path
    last_lines: collections.deque[str] = field(default_factory=lambda: collections.deque(maxlen=8))

    def reason(self) -> str:
        """The worker's own last word: its termination file, else its last output line."""
        try:
            text = self.termination_log.read_text(errors="replace").strip()
        except OSError:
            text = ""
        if not text:
            text = next((line for line in reversed(self.last_lines) if line.strip()), "")
        return text.strip().splitlines()[-1] if text.strip() else ""


def exit_code(returncode: int) -> int:
    """A worker's status as a shell reports it: a signal N is 128 + N."""
    return 128 - returncode if returncode < 0 else returncode


def failure_message(worker: Worker) -> str:
    code = worker.process.returncode
    reason = worker.reason()
    if code < 0:
        how = f"killed by {_signal_name(-code)}"
        return f"rank {worker.rank}: {how}" + (f" ({reason})" if reason else "")
    return f"rank {worker.rank}: {reason}" if reason else f"rank {worker.rank}: exit code {code}"


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:  # a real-time signal has no name
        return f"signal {number}"


def first_failure(ended: list[Worker]) -> Worker | None:
    """Of workers that ended in one poll, the one to report: a cause before a consequence."""
    failed = [w for w in ended if w.process.returncode != 0]
    causes = [w for w in failed if w.process.returncode != exits.PEER_LOST]
    ordered = causes or failed
    return ordered[0] if ordered else None


STOP_SIGNALS = {signal.SIGTERM, signal.SIGINT}


def _die_with_parent() -> None:
    """In the child before exec: SIGKILL when the launcher dies (Linux), and the stop
    signals the launcher blocks while it starts its workers unblocked again."""
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        pass


class Launcher:
    def __init__(self, settings: WorkerSettings, environ: Mapping[str, str]) -> None:
        self.settings = settings
        self.environ = dict(environ)
        self.workers: list[Worker] = []
        self.stopping: int | None = None  # the signal that asked us to stop
        self._out_lock = threading.Lock()
        self._dir = Path(tempfile.mkdtemp(prefix="rlhf-launcher-"))
        self._copiers: list[threading.Thread] = []

    def start(self) -> None:
        log_dir = self.environ.get(LOG_DIR)
        command = shlex.split(self.environ.get(WORKER_COMMAND, "")) or worker_command(
            sys.executable
        )
        for i, rank in enumerate(self.settings.pod_ranks()):
            own = self.settings.for_rank(rank, local_rank=i, node_rank=self.settings.node_rank)
            termination_log = self._dir / f"rank-{rank}"
            env = {
                **self.environ,
                **own.to_env(),
                exits.TERMINATION_LOG_ENV: str(termination_log),
            }
            process = subprocess.Popen(
                command,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                preexec_fn=_die_with_parent,
            )
            self.workers.append(Worker(rank, process, termination_log))
        # Output threads start after every fork (no thread runs while preexec_fn does).
        for worker in self.workers:
            sink = (Path(log_dir) / f"worker-{worker.rank}.log").open("ab") if log_dir else None
            copier = threading.Thread(
                target=self._copy_output,
                args=(worker, sink),
                daemon=True,
                name=f"rank-{worker.rank}",
            )
            copier.start()
            self._copiers.append(copier)

    def _copy_output(self, worker: Worker, sink: IO[bytes] | None) -> None:
        assert worker.process.stdout is not None
        out = sink or sys.stdout.buffer
        for line in worker.process.stdout:
            worker.last_lines.append(line.decode(errors="replace").rstrip())
            with self._out_lock:
                out.write(line)
                out.flush()
        if sink is not None:
            sink.close()

    def signal_all(self, signum: int) -> None:
        for w in self.workers:
            if w.process.poll() is None:
                w.process.send_signal(signum)

    def on_signal(self, signum: int, _frame: object) -> None:
        if self.stopping is None:
            self._kill_after(GRACE_SECONDS)  # as the kubelet does after the grace period
        self.stopping = signum
        self.signal_all(signum)

    def wait(self) -> int:
        """Until every worker has ended; the pod's exit status."""
        failure: Worker | None = None
        alive = list(self.workers)
        while alive:
            time.sleep(POLL_SECONDS)
            ended = [w for w in alive if w.process.poll() is not None]
            alive = [w for w in alive if w.process.returncode is None]
            if failure is None and self.stopping is None:
                failure = first_failure(ended)
                if failure is not None and alive:
                    self.signal_all(signal.SIGTERM)
                    self._kill_after(GRACE_SECONDS)
        # Their last lines may be the failing rank's reason. A process a worker left
        # behind (an engine's child) may hold its pipe open: wait a little, not for it.
        deadline = time.monotonic() + COPY_SECONDS
        for copier in self._copiers:
            copier.join(max(0.0, deadline - time.monotonic()))
        if failure is not None:
            code = exit_code(failure.process.returncode)
            return exits.ending(code, f"rlhf-launcher: {failure_message(failure)}", self.environ)
        codes = [w.process.returncode for w in self.workers]
        if all(c == 0 for c in codes):
            return 0
        # Stopped by a signal: the workers' codes are the signal's, not failures.
        return 128 + self.stopping if self.stopping else exit_code(next(c for c in codes if c))

    def _kill_after(self, seconds: float) -> None:
        def kill() -> None:
            time.sleep(seconds)
            self.signal_all(signal.SIGKILL)

        threading.Thread(target=kill, daemon=True, name="kill-after-grace").start()


def main(environ: Mapping[str, str] | None = None) -> int:
    environ = os.environ if environ is None else environ
    try:
        settings = WorkerSettings.from_env(environ)
        settings.pod_ranks()
    except SettingsError as err:
        return exits.ending(EXIT_CONFIG, f"rlhf-launcher: {err}", environ)
    launcher = Launcher(settings, environ)
    # A stop signal that came while a worker was between fork and exec would be lost
    # to it (the child still had the launcher's handler): held back until every worker
    # runs, then forwarded. (One before this line stops the launcher alone: no worker yet.)
    signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    signal.signal(signal.SIGTERM, launcher.on_signal)
    signal.signal(signal.SIGINT, launcher.on_signal)
    try:
        launcher.start()
    except OSError as err:
        launcher.signal_all(signal.SIGKILL)
        return exits.ending(EXIT_CONFIG, f"rlhf-launcher: cannot start a worker: {err}", environ)
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
    return launcher.wait()


if __name__ == "__main__":
    sys.exit(main())
