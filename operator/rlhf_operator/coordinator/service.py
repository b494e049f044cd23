"""The gRPC servicer: maps the three RPCs of `rlhf.controlplane.v1.Control` onto the
worker table. Everything it refuses ends the RPC with a status code and a one-line
message the worker prints as it exits."""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable, Iterator
from typing import NoReturn

import grpc

from ..controlplane import messages as m
from ..controlplane.v1 import control_pb2 as pb
from ..controlplane.v1 import control_pb2_grpc as pb_grpc
from .errors import Rejected
from .state import Report, WorkerTable

log = logging.getLogger(__name__)

# How often a stream's sender wakes up to notice that its RPC has ended.
_POLL_S = 0.2


class ControlService(pb_grpc.ControlServicer):
    def __init__(
        self,
        table: WorkerTable,
        heartbeat_interval_s: float,
        on_report: Callable[[Report], None] | None = None,
    ) -> None:
        self._table = table
        self._interval = heartbeat_interval_s
        self._on_report = on_report

    def Register(
        self, request: pb.RegisterRequest, context: grpc.ServicerContext
    ) -> pb.RegisterReply:
        try:
            session_id = self._table.register(m.registration_from_pb(request))
        except Rejected as err:
            log.warning("registration refused: %s", err.message)
            _abort(context, err)
        return pb.RegisterReply(
            session_id=session_id,
            heartbeat_interval_seconds=self._interval,
            heartbeat_timeout_seconds=self._table.heartbeat_timeout_s,
        )

    def Heartbeat(
        self, request: pb.HeartbeatRequest, context: grpc.ServicerContext
    ) -> pb.HeartbeatReply:
        try:
            self._table.heartbeat(request.rank, request.session_id)
        except Rejected as err:
            _abort(context, err)
        return pb.HeartbeatReply()

    def Session(
        self, request_iterator: Iterator[pb.WorkerMessage], context: grpc.ServicerContext
    ) -> Iterator[pb.Command]:
        try:
            first = next(request_iterator)
        except StopIteration:
            return
        if first.WhichOneof("kind") != "hello":
            _abort(
                context,
                Rejected("INVALID_ARGUMENT", "the first message on a session must be Hello"),
            )
        rank, session_id = first.hello.rank, first.hello.session_id
        try:
            outbound = self._table.open_stream(rank, session_id)
        except Rejected as err:
            _abort(context, err)

        def closed(reason: str) -> None:
            self._table.stream_closed(rank, session_id, reason)

        # A SIGKILLed worker's connection drops: the RPC ends and this fires at once.
        context.add_callback(lambda: closed("control stream broken (worker process gone?)"))
        reader = threading.Thread(
            target=self._read,
            args=(request_iterator, rank, session_id, closed),
            name=f"control-read-{rank}",
            daemon=True,
        )
        reader.start()
        while context.is_active():
            try:
                envelope = outbound.get(timeout=_POLL_S)
            except queue.Empty:
                continue
            if envelope is None:
                return
            yield m.command_to_pb(envelope)

    def _read(
        self,
        requests: Iterator[pb.WorkerMessage],
        rank: int,
        session_id: str,
        closed: Callable[[str], None],
    ) -> None:
        """Consume one worker's stream until it ends; results settle the table's futures."""
        reason = "the worker closed its control stream"
        try:
            for message in requests:
                try:
                    report = m.report_from_pb(message)
                except m.MessageError as err:
                    # A result we cannot read still answers its command, as a failure.
                    result = message.result
                    report = m.Outcome(result.command_id, ok=False, error=str(err))
                if report is None:
                    continue
                forwarded = self._table.on_message(rank, session_id, report)
                if forwarded is not None and self._on_report is not None:
                    try:
                        self._on_report(forwarded)
                    except Exception:
                        log.exception("report callback failed")
        except grpc.RpcError as err:
            reason = f"control stream broken: {_describe(err)}"
        except Exception as err:  # the stream died in a way gRPC did not classify
            reason = f"control stream broken: {err}"
        closed(reason)


def _describe(err: grpc.RpcError) -> str:
    code = err.code() if isinstance(err, grpc.Call) else None
    details = err.details() if isinstance(err, grpc.Call) else str(err)
    return f"{code.name if code else 'error'}: {details}"


def _abort(context: grpc.ServicerContext, err: Rejected) -> NoReturn:
    """End the RPC with the rejection's status code and message."""
    context.abort(getattr(grpc.StatusCode, err.code), err.message)
    raise AssertionError("grpc's abort returned")  # it raises; this keeps the types honest
