"""The coordinator's gRPC service seen from a raw client in this process: refusals
carry status codes and clear messages; the server API's own errors are clear."""

from __future__ import annotations

import threading

import grpc
import pytest

from rlhf_operator.controlplane import messages as m
from rlhf_operator.controlplane import tls
from rlhf_operator.controlplane.v1 import control_pb2 as pb
from rlhf_operator.controlplane.v1 import control_pb2_grpc as pb_grpc
from rlhf_operator.coordinator.errors import ControlPlaneError, WorkersNotReady
from rlhf_operator.coordinator.server import Coordinator, CoordinatorConfig


@pytest.fixture
def coordinator():
    coord = Coordinator(
        CoordinatorConfig(
            job_id="job-s",
            token="tok",
            world_size=2,
            heartbeat_interval_s=0.2,
            heartbeat_timeout_s=5,
        )
    )
    coord.start()
    yield coord
    coord.stop()


@pytest.fixture
def stub(coordinator):
    with grpc.insecure_channel(coordinator.address) as channel:
        yield pb_grpc.ControlStub(tls.with_token(channel, "tok"))


def register(stub, rank: int, token: str = "tok") -> pb.RegisterReply:
    request = pb.RegisterRequest(
        job_id="job-s", rank=rank, world_size=2, host="h", pid=1, token=token
    )
    return stub.Register(request, timeout=10)


def test_register_answers_with_a_session_and_the_heartbeat_settings(stub):
    reply = register(stub, 0)
    assert reply.session_id
    assert (reply.heartbeat_interval_seconds, reply.heartbeat_timeout_seconds) == (0.2, 5.0)
    stub.Heartbeat(
        pb.HeartbeatRequest(job_id="job-s", rank=0, session_id=reply.session_id), timeout=10
    )


def test_refusals_have_status_codes_and_messages(stub):
    with pytest.raises(grpc.RpcError) as wrong_token:
        register(stub, 1, token="nope")
    assert wrong_token.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert wrong_token.value.details().startswith("rank 1 of job 'job-s': token rejected")
    with pytest.raises(grpc.RpcError) as unknown:
        stub.Heartbeat(
            pb.HeartbeatRequest(job_id="job-s", rank=0, session_id="made-up"), timeout=10
        )
    assert unknown.value.code() == grpc.StatusCode.NOT_FOUND


def test_a_session_must_start_with_a_valid_hello(stub):
    no_hello = iter([pb.WorkerMessage(result=pb.Result(command_id=1, ok=True))])
    with pytest.raises(grpc.RpcError) as caught:
        list(stub.Session(no_hello, timeout=10))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    bad_session = iter([pb.WorkerMessage(hello=pb.Hello(job_id="job-s", rank=0, session_id="x"))])
    with pytest.raises(grpc.RpcError) as caught:
        list(stub.Session(bad_session, timeout=10))
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


def test_wait_for_workers_lists_who_is_missing(coordinator, stub):
    register(stub, 1)  # registered, but never opens its stream
    with pytest.raises(WorkersNotReady) as caught:
        coordinator.wait_for_workers(timeout_s=0.3)
    assert caught.value.missing == {
        0: "never registered",
        1: "registered but its control stream is not open",
    }
    assert "job job-s: 2 worker(s) not ready after 0.3 s (missing ranks [0, 1])" in str(
        caught.value
    )


def test_a_client_driven_session_runs_commands(coordinator, stub):
    session = register(stub, 0).session_id
    hello = pb.WorkerMessage(hello=pb.Hello(job_id="job-s", rank=0, session_id=session))
    got_command = threading.Event()
    finished = threading.Event()
    received: list[pb.Command] = []

    def requests():
        yield hello
        got_command.wait(10)
        yield m.outcome_to_pb(m.Outcome(received[0].command_id, ok=True, output={"pong": 1}))
        finished.wait(10)  # keep the stream open until the test is done with it

    def worker():
        try:
            for command in stub.Session(requests(), timeout=20):
                received.append(command)
                got_command.set()
        except grpc.RpcError:
            pass  # the stream ends when the coordinator stops

    threading.Thread(target=worker, daemon=True).start()
    try:
        coordinator.wait_for_workers(timeout_s=10, ranks=[0])
        result = coordinator.call([0], m.Custom("ping"), args={"a": 1}, timeout_s=10)[0]
    finally:
        finished.set()
    assert m.command_from_pb(received[0]).args == {"a": 1}
    assert (result.rank, result.command, result.output) == (0, "ping", {"pong": 1})


def test_send_refuses_args_that_are_not_json(coordinator):
    with pytest.raises(m.MessageError, match="args of command 'echo' is not JSON-serialisable"):
        coordinator.send([0], m.Custom("echo"), args={"x": {1, 2}})


def test_a_taken_port_is_a_clear_error(coordinator):
    other = Coordinator(
        CoordinatorConfig(job_id="j", token="t", world_size=1, bind=coordinator.address)
    )
    with pytest.raises(ControlPlaneError, match=f"cannot listen on {coordinator.address}"):
        other.start()
    other.stop()


def test_config_is_checked():
    with pytest.raises(ValueError, match="heartbeat_interval_s < heartbeat_timeout_s"):
        CoordinatorConfig(
            job_id="j", token="t", world_size=1, heartbeat_interval_s=5, heartbeat_timeout_s=5
        )
    with pytest.raises(ValueError, match="world_size must be >= 1"):
        CoordinatorConfig(job_id="j", token="t", world_size=0)
