"""Mutual TLS and the token on every RPC: a worker of another job (another CA) or with a
wrong token is refused on every RPC, says so, and changes nothing on the coordinator."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import grpc
import pytest

from rlhf_operator.controlplane import tls
from rlhf_operator.controlplane.v1 import control_pb2 as pb
from rlhf_operator.controlplane.v1 import control_pb2_grpc as pb_grpc
from rlhf_operator.coordinator.server import Coordinator, CoordinatorConfig
from tests.contract.launches import LOCAL

TOKEN = "s3cret"


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """This job's certificates, and another job's."""
    root = tmp_path_factory.mktemp("tls")
    mine = tls.make_job_certificates("job-x").write(root / "mine")
    theirs = tls.make_job_certificates("job-y").write(root / "theirs")
    return mine, theirs


@pytest.fixture
def coordinator(certs: tuple[Path, Path]) -> Iterator[Coordinator]:
    config = CoordinatorConfig(
        job_id="job-x",
        token=TOKEN,
        world_size=1,
        heartbeat_interval_s=0.2,
        heartbeat_timeout_s=5,
        tls_dir=str(certs[0]),
    )
    coord = Coordinator(config)
    coord.start()
    yield coord
    coord.stop()


def stub(coordinator: Coordinator, directory: Path, token: str) -> pb_grpc.ControlStub:
    channel = grpc.secure_channel(
        coordinator.address, tls.channel_credentials(directory), list(tls.CHANNEL_OPTIONS)
    )
    return pb_grpc.ControlStub(tls.with_token(channel, token))


def register(s: pb_grpc.ControlStub) -> pb.RegisterReply:
    request = pb.RegisterRequest(job_id="job-x", rank=0, world_size=1, host="h", pid=1, token=TOKEN)
    return s.Register(request, timeout=10)


def test_this_job_s_certificate_and_token_get_in(coordinator, certs) -> None:
    assert register(stub(coordinator, certs[0], TOKEN)).session_id
    assert list(coordinator.workers()) == [0]


def test_a_wrong_token_is_refused_on_every_rpc_and_changes_nothing(
    coordinator, certs, caplog
) -> None:
    s = stub(coordinator, certs[0], "guessed")
    caplog.set_level(logging.WARNING, logger="rlhf_operator.controlplane.tls")
    calls = {
        "Register": lambda: register(s),
        "Heartbeat": lambda: s.Heartbeat(pb.HeartbeatRequest(rank=0, session_id="x"), timeout=10),
        "Session": lambda: next(iter(s.Session(iter([pb.WorkerMessage()]), timeout=10))),
    }
    for method, call in calls.items():
        with pytest.raises(grpc.RpcError) as refused:
            call()
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED, method
        assert "token rejected by the coordinator" in refused.value.details()
        assert any(
            f"refused /rlhf.controlplane.v1.Control/{method} from " in r.getMessage()
            and r.getMessage().endswith("a wrong token")
            for r in caplog.records
        ), method
    assert coordinator.workers() == {}


def test_another_job_s_certificate_fails_the_handshake(coordinator, certs) -> None:
    with pytest.raises(grpc.RpcError) as refused:
        register(stub(coordinator, certs[1], TOKEN))
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    assert coordinator.workers() == {}
    # Without a certificate at all, no connection either.
    plain = pb_grpc.ControlStub(tls.with_token(grpc.insecure_channel(coordinator.address), TOKEN))
    with pytest.raises(grpc.RpcError):
        register(plain)
    assert coordinator.workers() == {}


def test_a_worker_of_another_job_exits_at_once_saying_why(coordinator, certs, tmp_path) -> None:
    settings = replace(
        LOCAL,
        job_id="job-x",
        coordinator_addr=coordinator.address,
        world_size=1,
        token=TOKEN,
        connect_timeout_s=60,
        tls_dir=str(certs[1]),
    )
    env = {**os.environ, **settings.to_env()}
    done = subprocess.run(
        [sys.executable, "-m", "rlhf_worker"], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 3, done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert "TLS handshake with" in last and "not of the same job's CA" in last, last
    assert coordinator.workers() == {}


def test_unreadable_certificates_are_named(tmp_path) -> None:
    with pytest.raises(tls.TLSError, match=r"ca.crt: cannot read it"):
        tls.channel_credentials(tmp_path)
    (tmp_path / "ca.crt").write_text("not a certificate")
    with pytest.raises(tls.TLSError, match=r"ca.crt: not a PEM file"):
        tls.server_credentials(tmp_path)
