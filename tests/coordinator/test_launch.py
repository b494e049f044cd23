"""The worker launch contract: command and environment per rank (pure functions)."""

from __future__ import annotations

import sys

import pytest

from rlhf_operator.coordinator.launch import WorkerLaunch, worker_command, worker_env

LAUNCH = WorkerLaunch(
    job_id="job-a",
    coordinator_addr="coord.ns.svc:50051",
    world_size=4,
    master_addr="job-a-worker-0.job-a",
    master_port=29500,
    token_file="/var/run/rlhf/token",
)


def test_command_runs_the_worker_module():
    assert worker_command("python") == ["python", "-m", "rlhf_worker"]
    assert worker_command() == [sys.executable, "-m", "rlhf_worker"]


def test_env_of_a_pod_rank():
    assert worker_env(LAUNCH, rank=3, local_rank=1, node_rank=1) == {
        "RLHF_JOB_ID": "job-a",
        "RLHF_COORDINATOR_ADDR": "coord.ns.svc:50051",
        "RLHF_TOKEN_FILE": "/var/run/rlhf/token",
        "RANK": "3",
        "WORLD_SIZE": "4",
        "LOCAL_RANK": "1",
        "NODE_RANK": "1",
        "MASTER_ADDR": "job-a-worker-0.job-a",
        "MASTER_PORT": "29500",
        "RLHF_DEVICE": "cpu",
        "PYTHONUNBUFFERED": "1",
    }


def test_env_of_a_local_rank_carries_the_local_settings():
    local = WorkerLaunch(
        job_id="job-a",
        coordinator_addr="127.0.0.1:4000",
        world_size=2,
        master_addr="127.0.0.1",
        master_port=29501,
        token="t0k",
        connect_timeout_s=30,
        socket_ifname="lo",
        threads_per_worker=1,
        handler_modules=("a.b", "c"),
        log_level="DEBUG",
    )
    env = worker_env(local, rank=1, local_rank=1)
    assert env["RLHF_TOKEN"] == "t0k" and "RLHF_TOKEN_FILE" not in env
    assert env["GLOO_SOCKET_IFNAME"] == env["NCCL_SOCKET_IFNAME"] == "lo"
    assert env["OMP_NUM_THREADS"] == "1"
    assert env["RLHF_CONNECT_TIMEOUT"] == "30"
    assert env["RLHF_WORKER_HANDLERS"] == "a.b,c"
    assert env["RLHF_LOG_LEVEL"] == "DEBUG"
    assert all(isinstance(v, str) for v in env.values())


@pytest.mark.parametrize(
    ("change", "rank", "message"),
    [
        ({}, 4, "rank 4 is out of range for world size 4"),
        ({"token": "x"}, 0, "exactly one of token and token_file"),
        ({"token_file": None}, 0, "exactly one of token and token_file"),
        ({"device": "tpu"}, 0, "device must be one of cpu, cuda, got 'tpu'"),
    ],
)
def test_bad_launch_settings_are_named(change, rank, message):
    from dataclasses import replace

    with pytest.raises(ValueError, match=message):
        worker_env(replace(LAUNCH, **change), rank=rank)
