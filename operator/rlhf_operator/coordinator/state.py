"""The coordinator's table of workers and of the commands they owe an answer to.

No gRPC here: the service feeds it registrations, heartbeats and reports; the
server's API submits commands and a watchdog calls `check` periodically. One
lock guards everything; futures are settled after it is released so that
callbacks run by `Future.set_result` can call back into the table.
"""

from __future__ import annotations

import enum
import itertools
import logging
import queue
import secrets
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from ..controlplane import messages as m
from ..controlplane.messages import Registration
from ..controlplane.tokens import tokens_match
from .errors import CommandFailed, CommandTimeout, Rejected, WorkerLost

log = logging.getLogger(__name__)

# What a worker's outbound queue carries: a command, or None to end its stream.
Outbound = queue.Queue[m.Envelope | None]


class WorkerState(enum.Enum):
    REGISTERED = "registered"  # registered, control stream not open yet
    CONNECTED = "connected"  # ready for commands
    LOST = "lost"  # missed heartbeats, broken stream or replaced
    EXITED = "exited"  # closed its stream after a shutdown command


@dataclass(frozen=True)
class WorkerInfo:
    """A snapshot of one worker, for callers of the server's API."""

    rank: int
    local_rank: int
    node_rank: int
    host: str
    pid: int
    device: str
    state: WorkerState
    seconds_since_seen: float
    lost_reason: str = ""


@dataclass(frozen=True)
class CommandResult:
    """A successful command's answer from one rank."""

    rank: int
    command: str
    output: dict[str, Any]
    seconds: float


@dataclass(frozen=True)
class Report:
    """Progress or metrics a worker streamed while running a command."""

    rank: int
    report: m.Progress | m.Metrics


@dataclass
class _Pending:
    name: str
    future: Future[CommandResult]
    timeout_s: float | None
    deadline: float | None  # on the table's clock


@dataclass
class _Worker:
    reg: Registration
    session_id: str
    outbound: Outbound
    last_seen: float
    state: WorkerState = WorkerState.REGISTERED
    lost_reason: str = ""
    shutdown_sent: bool = False
    pending: dict[int, _Pending] = field(default_factory=dict)


# A future and what to settle it with: a result or an exception.
_Settlement = tuple[Future[CommandResult], CommandResult | BaseException]


def _settle(settlements: Iterable[_Settlement]) -> None:
    for future, value in settlements:
        if future.done():
            continue
        if isinstance(value, BaseException):
            future.set_exception(value)
        else:
            future.set_result(value)


class WorkerTable:
    """Registered workers of one job and their pending commands."""

    def __init__(
        self,
        job_id: str,
        token: str,
        world_size: int,
        heartbeat_timeout_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.job_id = job_id
        self.world_size = world_size
        self.heartbeat_timeout_s = heartbeat_timeout_s
        self._token = token
        self._clock = clock
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._workers: dict[int, _Worker] = {}
        self._ids = itertools.count(1)

    # ---- driven by the service -------------------------------------------------

    def register(self, reg: Registration) -> str:
        """Admit a worker and return its new session id; Rejected if it does not belong."""
        who = f"rank {reg.rank} of job {reg.job_id!r}"
        if reg.job_id != self.job_id:
            raise Rejected(
                "PERMISSION_DENIED",
                f"{who}: this coordinator runs job {self.job_id!r}, not {reg.job_id!r}",
            )
        if not tokens_match(self._token, reg.token):
            raise Rejected(
                "UNAUTHENTICATED",
                f"{who}: token rejected by the coordinator "
                "(RLHF_TOKEN / RLHF_TOKEN_FILE must hold this job's token)",
            )
        if reg.world_size != self.world_size:
            raise Rejected(
                "INVALID_ARGUMENT",
                f"{who}: worker has WORLD_SIZE={reg.world_size} but the job has {self.world_size}",
            )
        if not 0 <= reg.rank < self.world_size:
            raise Rejected(
                "INVALID_ARGUMENT",
                f"{who}: rank out of range for world size {self.world_size}",
            )
        session_id = secrets.token_hex(8)
        with self._lock:
            old = self._workers.get(reg.rank)
            settlements: list[_Settlement] = []
            if old is not None and old.state in (WorkerState.REGISTERED, WorkerState.CONNECTED):
                # A restarted worker (a new pod, a respawned process) takes over its rank;
                # whatever the old one owed can no longer arrive.
                settlements = self._lose(
                    old, f"replaced by a new registration from {reg.host} pid {reg.pid}"
                )
            self._workers[reg.rank] = _Worker(
                reg=reg, session_id=session_id, outbound=queue.Queue(), last_seen=self._clock()
            )
            self._changed.notify_all()
        _settle(settlements)
        log.info("rank %d registered from %s pid %d", reg.rank, reg.host, reg.pid)
        return session_id

    def heartbeat(self, rank: int, session_id: str) -> None:
        with self._lock:
            worker = self._current(rank, session_id)
            worker.last_seen = self._clock()

    def open_stream(self, rank: int, session_id: str) -> Outbound:
        """Mark the worker connected; returns the queue its commands are sent from."""
        with self._lock:
            worker = self._current(rank, session_id)
            if worker.state is not WorkerState.REGISTERED:
                raise Rejected(
                    "FAILED_PRECONDITION", f"rank {rank}: a control stream is already open"
                )
            worker.state = WorkerState.CONNECTED
            worker.last_seen = self._clock()
            self._changed.notify_all()
            return worker.outbound

    def on_message(
        self, rank: int, session_id: str, report: m.Outcome | m.Progress | m.Metrics
    ) -> Report | None:
        """Record a worker's report; returns progress/metrics for the server's callback."""
        settlements: list[_Settlement] = []
        with self._lock:
            worker = self._workers.get(rank)
            if worker is None or worker.session_id != session_id:
                return None  # a replaced session's last words
            worker.last_seen = self._clock()
            if not isinstance(report, m.Outcome):
                return Report(rank, report)
            pending = worker.pending.pop(report.command_id, None)
            if pending is None:
                log.info("rank %d: late result for command %d ignored", rank, report.command_id)
                return None
            if report.ok:
                result = CommandResult(rank, pending.name, report.output, report.seconds)
                settlements.append((pending.future, result))
            else:
                settlements.append(
                    (pending.future, CommandFailed(rank, pending.name, report.error))
                )
        _settle(settlements)
        return None

    def stream_closed(self, rank: int, session_id: str, reason: str) -> None:
        """The worker's control stream ended: expected after a shutdown, a loss otherwise."""
        settlements: list[_Settlement] = []
        with self._lock:
            worker = self._workers.get(rank)
            if worker is None or worker.session_id != session_id:
                return
            if worker.state in (WorkerState.LOST, WorkerState.EXITED):
                return
            if worker.shutdown_sent and not worker.pending:
                worker.state = WorkerState.EXITED
                worker.outbound.put(None)
                self._changed.notify_all()
            else:
                settlements = self._lose(worker, reason)
        _settle(settlements)

    # ---- driven by the server's API --------------------------------------------

    def submit(
        self,
        ranks: Iterable[int],
        command: m.Command,
        args: dict[str, Any],
        timeout_s: float | None,
    ) -> dict[int, Future[CommandResult]]:
        """Queue `command` for each rank; a rank that is not connected fails at once."""
        name = m.handler_name(command)
        futures: dict[int, Future[CommandResult]] = {}
        settlements: list[_Settlement] = []
        with self._lock:
            command_id = next(self._ids)
            now = self._clock()
            for rank in ranks:
                future: Future[CommandResult] = Future()
                futures[rank] = future
                worker = self._workers.get(rank)
                if worker is None or worker.state is not WorkerState.CONNECTED:
                    why = self._absence(rank, worker)
                    settlements.append((future, WorkerLost(rank, why)))
                    continue
                deadline = None if timeout_s is None else now + timeout_s
                worker.pending[command_id] = _Pending(name, future, timeout_s, deadline)
                if isinstance(command, m.Shutdown):
                    worker.shutdown_sent = True
                worker.outbound.put(m.Envelope(command_id, command, args, timeout_s or 0.0))
        _settle(settlements)
        return futures

    def check(self) -> None:
        """Fail commands past their deadline and workers past their heartbeat timeout."""
        settlements: list[_Settlement] = []
        with self._lock:
            now = self._clock()
            for worker in self._workers.values():
                if worker.state in (WorkerState.REGISTERED, WorkerState.CONNECTED):
                    silent = now - worker.last_seen
                    if silent > self.heartbeat_timeout_s:
                        settlements += self._lose(
                            worker,
                            f"no heartbeat for {silent:.1f} s (timeout {self.heartbeat_timeout_s:g} s)",
                        )
                        continue
                for command_id, pending in list(worker.pending.items()):
                    if pending.deadline is not None and now > pending.deadline:
                        del worker.pending[command_id]
                        timeout = pending.timeout_s or 0.0
                        settlements.append(
                            (pending.future, CommandTimeout(worker.reg.rank, pending.name, timeout))
                        )
        _settle(settlements)

    def wait_connected(self, ranks: Iterable[int], timeout_s: float) -> dict[int, str]:
        """Block until every rank is connected or the time is up; returns the missing ones."""
        wanted = list(ranks)
        deadline = time.monotonic() + timeout_s  # real time, whatever the clock
        with self._changed:
            while True:
                missing = {
                    r: self._absence(r, self._workers.get(r))
                    for r in wanted
                    if (w := self._workers.get(r)) is None or w.state is not WorkerState.CONNECTED
                }
                left = deadline - time.monotonic()
                if not missing or left <= 0:
                    return missing
                self._changed.wait(min(left, 0.5))

    def wait_ended(self, ranks: Iterable[int], timeout_s: float) -> bool:
        """Block until no rank in `ranks` is registered or connected; False on timeout."""
        wanted = list(ranks)
        live = (WorkerState.REGISTERED, WorkerState.CONNECTED)
        deadline = time.monotonic() + timeout_s  # real time, whatever the clock
        with self._changed:
            while any((w := self._workers.get(r)) is not None and w.state in live for r in wanted):
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._changed.wait(min(left, 0.5))
            return True

    def snapshot(self) -> dict[int, WorkerInfo]:
        with self._lock:
            now = self._clock()
            return {
                rank: WorkerInfo(
                    rank=rank,
                    local_rank=w.reg.local_rank,
                    node_rank=w.reg.node_rank,
                    host=w.reg.host,
                    pid=w.reg.pid,
                    device=w.reg.device,
                    state=w.state,
                    seconds_since_seen=now - w.last_seen,
                    lost_reason=w.lost_reason,
                )
                for rank, w in sorted(self._workers.items())
            }

    def close_all(self, reason: str) -> None:
        """End every stream and fail every pending command (the server is stopping)."""
        settlements: list[_Settlement] = []
        with self._lock:
            for worker in self._workers.values():
                if worker.state in (WorkerState.REGISTERED, WorkerState.CONNECTED):
                    settlements += self._lose(worker, reason)
        _settle(settlements)

    # ---- helpers (called with the lock held) -----------------------------------

    def _current(self, rank: int, session_id: str) -> _Worker:
        worker = self._workers.get(rank)
        if worker is None or worker.session_id != session_id:
            raise Rejected(
                "NOT_FOUND",
                f"rank {rank} of job {self.job_id!r}: unknown session "
                "(the coordinator restarted or another worker took this rank)",
            )
        if worker.state in (WorkerState.LOST, WorkerState.EXITED):
            raise Rejected(
                "FAILED_PRECONDITION",
                f"rank {rank} of job {self.job_id!r}: session ended ({worker.lost_reason or 'exited'})",
            )
        return worker

    def _absence(self, rank: int, worker: _Worker | None) -> str:
        if worker is None:
            return (
                "never registered"
                if 0 <= rank < self.world_size
                else f"no such rank (world size {self.world_size})"
            )
        if worker.state is WorkerState.REGISTERED:
            return "registered but its control stream is not open"
        if worker.state is WorkerState.EXITED:
            return "exited after shutdown"
        return worker.lost_reason

    def _lose(self, worker: _Worker, reason: str) -> list[_Settlement]:
        worker.state = WorkerState.LOST
        worker.lost_reason = reason
        worker.outbound.put(None)  # ends the stream if it is still open
        self._changed.notify_all()
        rank = worker.reg.rank
        log.warning("worker rank %d lost: %s", rank, reason)
        failed: list[_Settlement] = [
            (p.future, WorkerLost(rank, reason)) for p in worker.pending.values()
        ]
        worker.pending.clear()
        return failed
