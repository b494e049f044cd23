"""The worker's side of the control plane: register, heartbeat, run commands.

`run_agent(settings, handlers)` connects to the coordinator (retrying with
exponential backoff until `connect_timeout_s`), registers with the job's
token, heartbeats from a background thread, and runs the commands that arrive
on its session stream one at a time, in order, on an executor thread. Each
command goes to the handler named by `messages.handler_name(command)` in a
plain dict, which later work fills with the engines' calls; `builtin_handlers`
gives the ones every worker has (init_process_group, shutdown, ping).

A handler gets an `Invocation` and returns a JSON-able mapping (or None). An
exception becomes an error result carrying a one-line message; the traceback
goes only to this worker's log.

`run_agent` returns 0 after a Shutdown command and raises `AgentExit` (an exit
status and a one-line message) when the worker must stop: refused at
registration, coordinator unreachable or lost. torch is imported only by the
handlers that need it, so the control plane itself starts fast.
"""

from __future__ import annotations

import logging
import os
import queue
import random
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import grpc

import rlhf_operator.controlplane.v1.control_pb2_grpc as pb_grpc
from rlhf_operator.contract.launch import WorkerSettings
from rlhf_operator.controlplane import exits, tls
from rlhf_operator.controlplane import messages as m
from rlhf_operator.controlplane.v1 import control_pb2 as pb

log = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_CONFIG = 2  # bad environment or handler modules
EXIT_REFUSED = 3  # the coordinator refused this worker (token, job, rank)
EXIT_UNREACHABLE = 4  # no coordinator before the connect deadline
EXIT_LOST = exits.PEER_LOST  # the coordinator went away or ended this worker's session

# gRPC status codes worth retrying while the coordinator is starting up.
_RETRYABLE = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
# ...and those by which the coordinator says this session is over.
_SESSION_OVER = (
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.UNAUTHENTICATED,
    grpc.StatusCode.PERMISSION_DENIED,
)
_POLL_S = 0.2
_MAX_ERROR_CHARS = 500


class AgentExit(Exception):
    """The worker must stop: `code` is its exit status, `message` says why in one line."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass
class WorkerContext:
    """What handlers share within one worker process."""

    config: WorkerSettings
    """How this process was launched (its rank, device, rendezvous address...)."""
    state: dict[str, Any] = field(default_factory=dict)
    """Per-process scratch space: engines keep their models, groups and buffers here."""
    host: str = field(default_factory=socket.gethostname)
    pid: int = field(default_factory=os.getpid)


@dataclass(frozen=True)
class Invocation:
    """One command as a handler sees it."""

    command_id: int
    command: m.Command
    args: dict[str, Any]
    worker: WorkerContext
    send: Callable[[pb.WorkerMessage], None]

    def progress(self, message: str, fraction: float = -1.0) -> None:
        """Stream a progress note for this command to the coordinator."""
        self.send(m.progress_to_pb(m.Progress(self.command_id, message, fraction)))

    def metrics(self, values: Mapping[str, float]) -> None:
        """Stream metrics (name -> number) for this command to the coordinator."""
        self.send(
            m.metrics_to_pb(m.Metrics(self.command_id, {k: float(v) for k, v in values.items()}))
        )


Handler = Callable[[Invocation], Mapping[str, Any] | None]


# ---- built-in handlers -----------------------------------------------------------


def init_process_group(inv: Invocation) -> dict[str, Any]:
    """Join the job's process group: gloo on CPU, nccl on CUDA (one GPU per process)."""
    import torch
    import torch.distributed as dist

    cfg = inv.worker.config
    backend = "nccl" if cfg.device == "cuda" else "gloo"
    if not dist.is_initialized():
        device = None
        if cfg.device == "cuda":
            if cfg.local_rank >= torch.cuda.device_count():
                raise RuntimeError(
                    f"RLHF_DEVICE=cuda and LOCAL_RANK={cfg.local_rank}, but this machine has"
                    f" {torch.cuda.device_count()} CUDA device(s)"
                )
            device = torch.device("cuda", cfg.local_rank)
            torch.cuda.set_device(device)
        assert isinstance(inv.command, m.InitProcessGroup)
        dist.init_process_group(
            backend=backend,
            init_method=f"tcp://{cfg.master_addr}:{cfg.master_port}",
            rank=cfg.rank,
            world_size=cfg.world_size,
            timeout=timedelta(seconds=inv.command.timeout_s or 300.0),
            # On NCCL this makes the communicator now, so that a reallocation's
            # batch_isend_irecv, in which only some ranks take part, may be the job's
            # first operation (torch requires every rank in a group's first one).
            device_id=device,
        )
    return {
        "backend": dist.get_backend(),
        "rank": dist.get_rank(),
        "world_size": dist.get_world_size(),
    }


def shutdown(inv: Invocation) -> dict[str, Any]:
    """Leave the process group (if this worker ever joined one); the agent then exits."""
    dist = sys.modules.get("torch.distributed")  # never import torch just to shut down
    if dist is not None and dist.is_initialized():
        dist.destroy_process_group()
    return {}


def ping(inv: Invocation) -> dict[str, Any]:
    worker = inv.worker
    return {"rank": worker.config.rank, "host": worker.host, "pid": worker.pid}


def builtin_handlers() -> dict[str, Handler]:
    return {
        m.InitProcessGroup.NAME: init_process_group,
        m.Shutdown.NAME: shutdown,
        "ping": ping,
    }


# ---- dispatch (pure apart from the handler it calls) -----------------------------


def one_line(err: BaseException) -> str:
    """`Type: first line of the message`, capped, for an error result."""
    text = str(err).strip().splitlines()
    line = f"{type(err).__name__}: {text[0]}" if text else type(err).__name__
    return line if len(line) <= _MAX_ERROR_CHARS else line[: _MAX_ERROR_CHARS - 3] + "..."


def dispatch(
    handlers: Mapping[str, Handler],
    message: pb.Command,
    worker: WorkerContext,
    send: Callable[[pb.WorkerMessage], None],
) -> m.Outcome:
    """Run one command through the handler table; never raises."""
    start = time.perf_counter()
    try:
        envelope = m.command_from_pb(message)
    except m.MessageError as err:
        return m.Outcome(message.command_id, ok=False, error=f"malformed command: {err}")
    name = m.handler_name(envelope.command)
    handler = handlers.get(name)
    if handler is None:
        known = ", ".join(sorted(handlers))
        return m.Outcome(
            envelope.command_id,
            ok=False,
            error=f"no handler for {name!r} (this worker has: {known})",
        )
    invocation = Invocation(envelope.command_id, envelope.command, envelope.args, worker, send)
    try:
        output = dict(handler(invocation) or {})
        m.encode_json(output, f"output of {name!r}")  # refuse what cannot travel, here
    except BaseException as err:  # a handler must not take the worker down with it
        log.exception("command %d (%s) failed", envelope.command_id, name)
        seconds = time.perf_counter() - start
        return m.Outcome(envelope.command_id, ok=False, error=one_line(err), seconds=seconds)
    return m.Outcome(
        envelope.command_id, ok=True, output=output, seconds=time.perf_counter() - start
    )


def backoff_delays(
    initial_s: float = 0.1, factor: float = 2.0, maximum_s: float = 5.0
) -> Iterator[float]:
    """initial, initial*factor, ... capped at maximum (forever)."""
    delay = initial_s
    while True:
        yield delay
        delay = min(delay * factor, maximum_s)


def _status(err: grpc.RpcError) -> tuple[grpc.StatusCode | None, str]:
    if isinstance(err, grpc.Call):
        return err.code(), err.details() or ""
    return None, str(err)


# ---- the agent -------------------------------------------------------------------


class Agent:
    """One worker's connection to its coordinator."""

    def __init__(self, config: WorkerSettings, handlers: Mapping[str, Handler]) -> None:
        self.config = config
        self.handlers = dict(handlers)
        self.context = WorkerContext(config)
        options: list[tuple[str, str | int]] = [
            # Let our own backoff decide the pace of connection attempts.
            ("grpc.initial_reconnect_backoff_ms", 100),
            ("grpc.min_reconnect_backoff_ms", 100),
            ("grpc.max_reconnect_backoff_ms", 2000),
        ]
        if config.tls_dir is not None:
            credentials = tls.channel_credentials(config.tls_dir)
            options += list(tls.CHANNEL_OPTIONS)
            self._channel = grpc.secure_channel(config.coordinator_addr, credentials, options)
        else:
            self._channel = grpc.insecure_channel(config.coordinator_addr, options=options)
        # The job's token on every call, not only on Register.
        self._stub = pb_grpc.ControlStub(tls.with_token(self._channel, config.token or ""))
        self._outbound: queue.Queue[pb.WorkerMessage | None] = queue.Queue()
        self._commands: queue.Queue[pb.Command] = queue.Queue()
        self._stop = threading.Event()
        self._shut_down = threading.Event()
        self._fatal: AgentExit | None = None
        self._fatal_lock = threading.Lock()

    def run(self) -> int:
        try:
            reply = self.register()
            return self._serve(reply)
        finally:
            self._stop.set()
            self._channel.close()

    def register(self) -> pb.RegisterReply:
        """Register, retrying with backoff while the coordinator is not reachable."""
        cfg = self.config
        request = m.registration_to_pb(
            m.Registration.of(cfg, host=self.context.host, pid=self.context.pid)
        )
        deadline = time.monotonic() + cfg.connect_timeout_s
        jitter = random.Random(cfg.rank)  # spread the ranks' retries, reproducibly
        last_error = "no attempt made"
        for delay in backoff_delays():
            left = deadline - time.monotonic()
            if left <= 0:
                break
            try:
                reply: pb.RegisterReply = self._stub.Register(request, timeout=min(left, 10.0))
                log.info("registered with %s (session %s)", cfg.coordinator_addr, reply.session_id)
                return reply
            except grpc.RpcError as err:
                code, details = _status(err)
                if code == grpc.StatusCode.UNIMPLEMENTED:
                    raise AgentExit(
                        EXIT_REFUSED,
                        f"{cfg.who}: the server at {cfg.coordinator_addr} does not speak "
                        "rlhf.controlplane.v1 (is it the job's coordinator?)",
                    ) from None
                if "handshake" in details.lower():
                    # A coordinator that is not up refuses the connection; one that
                    # fails the handshake is up, with another job's certificates.
                    raise AgentExit(
                        EXIT_REFUSED,
                        f"{cfg.who}: TLS handshake with {cfg.coordinator_addr} failed: its "
                        "certificate and this worker's are not of the same job's CA, or one "
                        f"has expired ({details})",
                    ) from None
                if code not in _RETRYABLE:
                    raise AgentExit(EXIT_REFUSED, f"registration refused: {details}") from None
                last_error = f"{code.name if code else 'error'}: {details}"
            pause = min(delay * jitter.uniform(0.8, 1.2), deadline - time.monotonic())
            if pause > 0:
                time.sleep(pause)
        raise AgentExit(
            EXIT_UNREACHABLE,
            f"{cfg.who}: gave up after {cfg.connect_timeout_s:g} s: coordinator at "
            f"{cfg.coordinator_addr} unreachable (last error: {last_error})",
        )

    def _serve(self, reply: pb.RegisterReply) -> int:
        cfg = self.config
        session_id = reply.session_id
        self._outbound.put(
            pb.WorkerMessage(
                hello=pb.Hello(job_id=cfg.job_id, rank=cfg.rank, session_id=session_id)
            )
        )
        stream = self._stub.Session(self._outgoing())
        threading.Thread(
            target=self._heartbeat,
            args=(
                session_id,
                reply.heartbeat_interval_seconds,
                reply.heartbeat_timeout_seconds,
                stream,
            ),
            name="heartbeat",
            daemon=True,
        ).start()
        # Daemon: a handler stuck in a collective must not keep a dead job's process alive.
        threading.Thread(target=self._execute, name="executor", daemon=True).start()
        ending = "the coordinator closed the control stream"
        try:
            for command in stream:
                self._commands.put(command)
        except grpc.RpcError as err:
            code, details = _status(err)
            ending = f"control stream broken ({code.name if code else 'error'}: {details})"
        self._stop.set()
        if self._fatal is not None:
            raise self._fatal
        if self._shut_down.is_set():
            log.info("shut down by the coordinator")
            return EXIT_OK
        raise AgentExit(
            EXIT_LOST, f"{cfg.who}: lost the coordinator at {cfg.coordinator_addr}: {ending}"
        )

    def _outgoing(self) -> Iterator[pb.WorkerMessage]:
        """The request side of the session stream; ends (half-closes) on None."""
        while not self._stop.is_set():
            try:
                item = self._outbound.get(timeout=_POLL_S)
            except queue.Empty:
                continue
            if item is None:
                return
            yield item

    def _execute(self) -> None:
        while not self._stop.is_set():
            try:
                message = self._commands.get(timeout=_POLL_S)
            except queue.Empty:
                continue
            if self._shut_down.is_set():
                continue  # nothing runs after shutdown
            outcome = dispatch(self.handlers, message, self.context, self._outbound.put)
            self._outbound.put(m.outcome_to_pb(outcome))
            if message.WhichOneof("kind") == "shutdown":
                self._shut_down.set()
                self._outbound.put(None)  # half-close: the coordinator then ends the stream
                return

    def _heartbeat(
        self, session_id: str, interval: float, timeout: float, stream: grpc.Call
    ) -> None:
        cfg = self.config
        request = pb.HeartbeatRequest(job_id=cfg.job_id, rank=cfg.rank, session_id=session_id)
        last_answer = time.monotonic()
        while not self._stop.wait(interval):
            try:
                self._stub.Heartbeat(request, timeout=max(interval, 1.0))
                last_answer = time.monotonic()
                continue
            except grpc.RpcError as err:
                code, details = _status(err)
            if self._stop.is_set():
                return
            if code in _SESSION_OVER:
                self._abandon(f"the coordinator ended this worker's session: {details}", stream)
                return
            silent = time.monotonic() - last_answer
            if silent > timeout:
                self._abandon(
                    f"{cfg.who}: lost the coordinator at {cfg.coordinator_addr}: no heartbeat "
                    f"answered for {silent:.1f} s (last error: {details})",
                    stream,
                )
                return

    def _abandon(self, message: str, stream: grpc.Call) -> None:
        with self._fatal_lock:
            if self._fatal is None:
                self._fatal = AgentExit(EXIT_LOST, message)
        stream.cancel()  # wakes the main thread out of the stream


def run_agent(config: WorkerSettings, handlers: Mapping[str, Handler]) -> int:
    """Serve the coordinator until it shuts this worker down (0) or AgentExit."""
    try:
        agent = Agent(config, handlers)
    except tls.TLSError as err:
        raise AgentExit(EXIT_CONFIG, f"{config.who}: {err}") from None
    return agent.run()
