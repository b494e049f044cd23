"""The worker launch contract: one type writes the environment and reads it back."""

from __future__ import annotations

import sys
from dataclasses import replace

import pytest

from rlhf_operator.contract.launch import (
    SettingsError,
    WorkerSettings,
    launcher_command,
    worker_command,
)
from tests.contract.launches import LOCAL

POD = WorkerSettings(
    job_id="job-a",
    coordinator_addr="coord.ns.svc:50051",
    world_size=4,
    master_addr="job-a-worker-0.job-a",
    master_port=29500,
    token_file="/var/run/rlhf/token",
    local_world_size=2,
)


def test_command_runs_the_worker_module() -> None:
    assert worker_command("python") == ["python", "-m", "rlhf_worker"]
    assert worker_command() == [sys.executable, "-m", "rlhf_worker"]
    assert launcher_command("python") == ["python", "-m", "rlhf_worker.launcher"]


def test_a_pod_s_launcher_starts_its_local_world_of_ranks() -> None:
    assert list(POD.for_rank(2, node_rank=1).pod_ranks()) == [2, 3]
    with pytest.raises(
        SettingsError, match="RANK=3 with LOCAL_WORLD_SIZE=2 runs past WORLD_SIZE=4"
    ):
        POD.for_rank(3).pod_ranks()


def test_env_of_a_pod_rank() -> None:
    assert POD.for_rank(3, local_rank=1, node_rank=1).to_env() == {
        "RLHF_JOB_ID": "job-a",
        "RLHF_COORDINATOR_ADDR": "coord.ns.svc:50051",
        "RLHF_TOKEN_FILE": "/var/run/rlhf/token",
        "RANK": "3",
        "WORLD_SIZE": "4",
        "LOCAL_RANK": "1",
        "NODE_RANK": "1",
        "LOCAL_WORLD_SIZE": "2",
        "MASTER_ADDR": "job-a-worker-0.job-a",
        "MASTER_PORT": "29500",
        "RLHF_DEVICE": "cpu",
        "RLHF_CONNECT_TIMEOUT": "300",
        "RLHF_LOG_LEVEL": "INFO",
        "PYTHONUNBUFFERED": "1",
    }


def test_env_of_a_local_rank_carries_the_local_settings() -> None:
    local = replace(
        LOCAL,
        connect_timeout_s=30,
        socket_ifname="lo",
        threads_per_worker=1,
        handler_modules=("a.b", "c"),
        log_level="DEBUG",
    )
    env = local.for_rank(1, local_rank=1, local_world_size=2).to_env()
    assert env["RLHF_TOKEN"] == "s3cret" and "RLHF_TOKEN_FILE" not in env
    assert env["GLOO_SOCKET_IFNAME"] == env["NCCL_SOCKET_IFNAME"] == "lo"
    assert env["OMP_NUM_THREADS"] == "1"
    assert env["RLHF_CONNECT_TIMEOUT"] == "30"
    assert env["RLHF_WORKER_HANDLERS"] == "a.b,c"
    assert env["RLHF_LOG_LEVEL"] == "DEBUG"
    assert all(isinstance(v, str) for v in env.values())


@pytest.mark.parametrize(
    "settings",
    [
        LOCAL.for_rank(2, local_rank=1, node_rank=1, local_world_size=2),
        replace(
            LOCAL,
            device="cuda",
            socket_ifname="eth0",
            threads_per_worker=3,
            handler_modules=("tests.x",),
            log_level="WARNING",
        ),
    ],
)
def test_what_is_written_is_what_the_worker_reads(settings: WorkerSettings) -> None:
    assert WorkerSettings.from_env(settings.to_env()) == settings


def test_torch_s_own_variables_are_never_an_error() -> None:
    # OpenMP reads forms of its own ("4,2": nested parallelism); only a plain count is ours.
    environ = {**LOCAL.to_env(), "OMP_NUM_THREADS": "4,2", "GLOO_SOCKET_IFNAME": "eth1"}
    settings = WorkerSettings.from_env(environ)
    assert settings.threads_per_worker is None and settings.socket_ifname == "eth1"
    assert WorkerSettings.from_env({**environ, "OMP_NUM_THREADS": "3"}).threads_per_worker == 3


def test_seconds_read_back_exactly() -> None:
    for seconds in (300.0, 12.5, 1234567.0, 0.1):
        settings = replace(LOCAL, connect_timeout_s=seconds)
        assert WorkerSettings.from_env(settings.to_env()).connect_timeout_s == seconds


def test_token_from_a_mounted_secret_file(tmp_path) -> None:
    path = tmp_path / "token"
    path.write_text("from-the-secret\n")
    settings = WorkerSettings.from_env(replace(POD, token_file=str(path)).to_env())
    assert settings.token == "from-the-secret" and settings.token_file == str(path)
    # Written again, the Secret's value stays out of the environment.
    assert "RLHF_TOKEN" not in settings.to_env()
    assert "from-the-secret" not in repr(settings)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"RLHF_JOB_ID": ""}, "RLHF_JOB_ID is not set"),
        ({"RANK": None}, "RANK is not set"),
        ({"RANK": "two"}, "RANK='two' is not an integer"),
        ({"RANK": "4"}, "RANK=4 is out of range for WORLD_SIZE=4"),
        ({"WORLD_SIZE": "0"}, "WORLD_SIZE=0 must be >= 1"),
        ({"LOCAL_WORLD_SIZE": "9"}, "LOCAL_WORLD_SIZE=9 must be between 1 and WORLD_SIZE="),
        ({"LOCAL_RANK": "1"}, "LOCAL_RANK=1 is out of range for LOCAL_WORLD_SIZE=1"),
        (
            {"RLHF_COORDINATOR_ADDR": "coordinator"},
            "RLHF_COORDINATOR_ADDR='coordinator' is not host:port",
        ),
        ({"MASTER_PORT": "70000"}, "MASTER_PORT=70000 is not a TCP port"),
        ({"MASTER_ADDR": None}, "MASTER_ADDR is not set"),
        ({"RLHF_DEVICE": "tpu"}, "RLHF_DEVICE='tpu' must be one of cpu, cuda"),
        ({"RLHF_CONNECT_TIMEOUT": "soon"}, "RLHF_CONNECT_TIMEOUT='soon' is not a number"),
        ({"RLHF_CONNECT_TIMEOUT": "0"}, "RLHF_CONNECT_TIMEOUT=0 must be > 0"),
        ({"RLHF_TOKEN": None}, r"RLHF_TOKEN \(or RLHF_TOKEN_FILE\) is not set"),
        ({"RLHF_TOKEN_FILE": "/x"}, "set only one of RLHF_TOKEN and RLHF_TOKEN_FILE"),
        (
            {"RLHF_TOKEN": None, "RLHF_TOKEN_FILE": "/no/such/file"},
            "RLHF_TOKEN_FILE=/no/such/file: cannot read it",
        ),
        ({"RLHF_LOG_LEVEL": "loud"}, "RLHF_LOG_LEVEL='LOUD' must be one of"),
    ],
)
def test_bad_environment_is_named(change: dict[str, str | None], message: str) -> None:
    environ = LOCAL.to_env()
    for key, value in change.items():
        if value is None:
            environ.pop(key, None)
        else:
            environ[key] = value
    with pytest.raises(SettingsError, match=message):
        WorkerSettings.from_env(environ)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"rank": 4}, "RANK=4 is out of range for WORLD_SIZE=4"),
        ({"token_file": None}, r"RLHF_TOKEN \(or RLHF_TOKEN_FILE\) is not set"),
        ({"device": "tpu"}, "RLHF_DEVICE='tpu' must be one of cpu, cuda"),
        ({"master_port": 0}, "MASTER_PORT=0 is not a TCP port"),
        ({"job_id": " "}, "RLHF_JOB_ID is not set"),
        ({"token_file": "/t", "threads_per_worker": 0}, "OMP_NUM_THREADS=0 must be >= 1"),
    ],
)
def test_bad_launch_settings_are_named_when_built(change: dict[str, object], message: str) -> None:
    with pytest.raises(SettingsError, match=message):
        replace(POD, **change)
