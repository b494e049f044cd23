"""The coordinator's control-plane server and the API the plan executor drives workers with.

    with Coordinator(CoordinatorConfig(job_id, token, world_size=4)) as coord:
        # spawn workers: contract.launch's worker_command, WorkerSettings(...).to_env()
        coord.wait_for_workers(timeout_s=120)
        coord.call(range(4), InitProcessGroup(), timeout_s=300)
        futures = coord.send([0, 1], RunCall("actor_gen", iteration=3), args={...})
        ...
    # leaving the block sends Shutdown to every connected worker and stops the server;
    # leaving it by an exception stops at once (every worker exits as its stream ends)

Every command future ends: with a `CommandResult`, or `CommandFailed` (the
handler raised), `CommandTimeout` (its deadline passed) or `WorkerLost` (missed
heartbeats, a broken stream, or a worker that was never there). Nothing waits
forever on a dead worker.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from concurrent import futures as cf
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import grpc

from ..controlplane import messages as m
from ..controlplane import tls
from ..controlplane.v1 import control_pb2_grpc as pb_grpc
from .errors import ControlPlaneError, WorkersNotReady
from .service import ControlService
from .state import CommandResult, Report, WorkerInfo, WorkerState, WorkerTable

log = logging.getLogger(__name__)

# Control messages are small by design; a generous cap still catches misuse early.
MAX_MESSAGE_BYTES = 16 * 1024 * 1024


@dataclass(frozen=True)
class CoordinatorConfig:
    job_id: str
    token: str
    world_size: int
    bind: str = "127.0.0.1:0"
    """host:port to listen on; port 0 picks a free one (see `Coordinator.address`)."""
    heartbeat_interval_s: float = 2.0
    """Workers heartbeat this often (they learn it when they register)."""
    heartbeat_timeout_s: float = 30.0
    """A worker silent this long is lost; workers give up on the coordinator after as long.

    Generous because a worker's heartbeat thread can starve for seconds while its
    main work holds the GIL (importing torch, building a model); a crashed worker
    is found at once anyway, by its broken stream. This catches frozen or
    partitioned ones."""
    default_command_timeout_s: float | None = None
    """Deadline of commands sent without one (None: no deadline)."""
    tls_dir: str | None = None
    """The job's certificates (`controlplane.tls`): serve mutual TLS. None: plaintext
    (tests of the control plane itself); the token is checked on every RPC either way."""

    def __post_init__(self) -> None:
        if self.world_size < 1:
            raise ValueError(f"world_size must be >= 1, got {self.world_size}")
        if not 0 < self.heartbeat_interval_s < self.heartbeat_timeout_s:
            raise ValueError(
                "need 0 < heartbeat_interval_s < heartbeat_timeout_s, got "
                f"{self.heartbeat_interval_s} and {self.heartbeat_timeout_s}"
            )


def _is_session(method: str) -> bool:
    """The one streaming RPC (the others are unary)."""
    return method.endswith("/Session")


class Coordinator:
    """A running control-plane server for one job.

    `on_report` receives workers' progress and metrics; it is called from the
    server's threads (one per worker stream), so it must be thread-safe and quick.
    """

    def __init__(
        self, config: CoordinatorConfig, on_report: Callable[[Report], None] | None = None
    ) -> None:
        self.config = config
        self._table = WorkerTable(
            config.job_id, config.token, config.world_size, config.heartbeat_timeout_s
        )
        self._service = ControlService(self._table, config.heartbeat_interval_s, on_report)
        self._server: grpc.Server | None = None
        self._port = 0
        self._stop = threading.Event()
        self._watchdog = threading.Thread(target=self._watch, name="control-watchdog", daemon=True)

    # ---- lifecycle -------------------------------------------------------------

    def start(self) -> str:
        """Listen on `config.bind`; returns the address workers should dial."""
        # Each open session holds one server thread for its lifetime; the rest
        # serve Register and Heartbeat (and sessions being replaced).
        threads = 2 * self.config.world_size + 8
        server = grpc.server(
            cf.ThreadPoolExecutor(max_workers=threads, thread_name_prefix="control"),
            interceptors=[tls.TokenCheck(self.config.token, streaming=_is_session)],
            options=[
                ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
                # gRPC shares ports by default: two coordinators on one port would
                # split the workers between them. A taken port must be an error.
                ("grpc.so_reuseport", 0),
            ],
        )
        pb_grpc.add_ControlServicer_to_server(self._service, server)
        try:
            if self.config.tls_dir is not None:
                credentials = tls.server_credentials(self.config.tls_dir)
                self._port = server.add_secure_port(self.config.bind, credentials)
            else:
                self._port = server.add_insecure_port(self.config.bind)
        except tls.TLSError as err:
            raise ControlPlaneError(f"cannot serve TLS: {err}") from None
        except RuntimeError as err:
            raise ControlPlaneError(f"cannot listen on {self.config.bind}: {err}") from None
        if self._port == 0:
            raise ControlPlaneError(f"cannot listen on {self.config.bind}")
        server.start()
        self._server = server
        self._watchdog.start()
        log.info("control plane of job %s listening on %s", self.config.job_id, self.address)
        return self.address

    @property
    def port(self) -> int:
        return self._port

    @property
    def address(self) -> str:
        """host:port of the listening socket (the bind host with the real port)."""
        host = self.config.bind.rsplit(":", 1)[0]
        return f"{host}:{self._port}"

    def shutdown(self, timeout_s: float = 10.0, reason: str = "job finished") -> None:
        """Tell every connected worker to shut down, wait up to `timeout_s`, then stop."""
        if self._server is not None:
            connected = [r for r, w in self.workers().items() if w.state is WorkerState.CONNECTED]
            deadline = time.monotonic() + timeout_s
            pending = self.send(connected, m.Shutdown(reason), timeout_s=timeout_s)
            cf.wait(list(pending.values()), timeout=timeout_s)
            # Each worker closes its stream right after answering; let that land so
            # the workers end EXITED rather than lost to our own stop().
            self._table.wait_ended(connected, max(0.0, deadline - time.monotonic()))
        self.stop()

    def stop(self, grace_s: float = 1.0) -> None:
        """Stop at once: pending commands fail with WorkerLost, streams end, workers exit."""
        self._stop.set()
        self._table.close_all("the coordinator stopped")
        if self._server is not None:
            self._server.stop(grace_s).wait()
            self._server = None
        if self._watchdog.is_alive():
            self._watchdog.join()

    def __enter__(self) -> Coordinator:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc is None:
            self.shutdown()
        else:
            # Failing: some workers may be stuck in a collective whose peer died and
            # would never get to a Shutdown. Ending their streams makes them exit now.
            self.stop()

    def _watch(self) -> None:
        tick = min(0.25, self.config.heartbeat_interval_s / 2)
        while not self._stop.wait(tick):
            try:
                self._table.check()
            except Exception:  # the watchdog must outlive any one bad check
                log.exception("control-plane watchdog check failed")

    # ---- the executor's API ----------------------------------------------------

    def workers(self) -> dict[int, WorkerInfo]:
        """A snapshot of every worker that ever registered, by rank."""
        return self._table.snapshot()

    def wait_for_workers(
        self, timeout_s: float, ranks: Iterable[int] | None = None
    ) -> dict[int, WorkerInfo]:
        """Block until `ranks` (default: all) are registered and connected.

        Raises WorkersNotReady listing each missing rank and why, after `timeout_s`.
        """
        wanted = list(range(self.config.world_size) if ranks is None else ranks)
        missing = self._table.wait_connected(wanted, timeout_s)
        if missing:
            raise WorkersNotReady(self.config.job_id, timeout_s, missing)
        snapshot = self.workers()
        return {rank: snapshot[rank] for rank in wanted}

    def send(
        self,
        ranks: Iterable[int],
        command: m.Command,
        args: Mapping[str, Any] | None = None,
        timeout_s: float | None = None,
    ) -> dict[int, cf.Future[CommandResult]]:
        """Send `command` (with JSON `args`) to each rank; returns a future per rank."""
        if timeout_s is None:
            timeout_s = self.config.default_command_timeout_s
        # Fail here, in the caller, rather than in a stream thread.
        m.encode_json(args, f"args of command {m.handler_name(command)!r}")
        return self._table.submit(ranks, command, dict(args or {}), timeout_s)

    def call(
        self,
        ranks: Iterable[int],
        command: m.Command,
        args: Mapping[str, Any] | None = None,
        timeout_s: float | None = None,
    ) -> dict[int, CommandResult]:
        """`send` and wait for every rank; raises the first failure as soon as it happens."""
        pending = self.send(ranks, command, args, timeout_s)
        done, _ = cf.wait(list(pending.values()), return_when=cf.FIRST_EXCEPTION)
        for _, future in sorted(pending.items()):
            err = future.exception() if future in done else None
            if err is not None:
                raise err
        return {rank: future.result() for rank, future in pending.items()}
