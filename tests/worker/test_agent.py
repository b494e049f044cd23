"""The worker agent: its environment contract, dispatch, and real worker processes
against a coordinator in this process (wrong token, late or absent coordinator)."""

from __future__ import annotations

import itertools
import os
import socket
import subprocess
import time
from dataclasses import replace

import pytest

from rlhf_operator.contract.launch import WorkerSettings, worker_command
from rlhf_operator.controlplane import exits
from rlhf_operator.controlplane import messages as m
from rlhf_operator.controlplane.v1 import control_pb2 as pb
from rlhf_operator.coordinator.server import Coordinator, CoordinatorConfig
from rlhf_worker import __main__ as entry
from rlhf_worker.agent import (
    Invocation,
    WorkerContext,
    backoff_delays,
    builtin_handlers,
    dispatch,
    one_line,
)
from tests.contract.launches import LOCAL, worker_settings

LAUNCH = LOCAL


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# ---- the entry point (its environment contract: tests/contract/test_launch.py) --------


def test_main_prints_one_line_and_exits_2_on_bad_environment(capsys, tmp_path):
    assert entry.main({}) == 2
    assert capsys.readouterr().err == "rlhf-worker: RLHF_COORDINATOR_ADDR is not set\n"
    reason = tmp_path / "termination-log"  # where a pod's kubelet reads it
    assert entry.main({exits.TERMINATION_LOG_ENV: str(reason)}) == 2
    assert reason.read_text() == "rlhf-worker: RLHF_COORDINATOR_ADDR is not set"


def test_handler_modules_extend_the_builtin_table():
    handlers = entry.load_handlers(())
    assert set(handlers) == {"init_process_group", "shutdown", "ping"}
    with pytest.raises(entry.ConfigError, match="cannot import 'no_such_module_x'"):
        entry.load_handlers(("no_such_module_x",))
    with pytest.raises(entry.ConfigError, match=r"'rlhf_worker\.rewards' has no HANDLERS dict"):
        entry.load_handlers(("rlhf_worker.rewards",))


# ---- dispatch --------------------------------------------------------------------


CONFIG = worker_settings(coordinator_addr="127.0.0.1:1", world_size=2, rank=1, token="t")


def run(handlers, command, args=None):
    sent: list[pb.WorkerMessage] = []
    msg = m.command_to_pb(m.Envelope(7, command, args or {}))
    return dispatch(handlers, msg, WorkerContext(CONFIG), sent.append), sent


def test_dispatch_returns_the_handlers_output_and_streams_its_reports():
    def work(inv: Invocation):
        inv.progress("half", 0.5)
        inv.metrics({"loss": 2})
        return {"got": inv.args["n"] + 1, "rank": inv.worker.config.rank}

    outcome, sent = run({"work": work}, m.Custom("work"), {"n": 1})
    assert outcome.ok and outcome.command_id == 7
    assert outcome.output == {"got": 2, "rank": 1}
    assert [m.report_from_pb(s) for s in sent] == [
        m.Progress(7, "half", 0.5),
        m.Metrics(7, {"loss": 2.0}),
    ]


def test_a_raising_handler_becomes_a_one_line_error(caplog):
    def broken(inv: Invocation):
        raise RuntimeError("weights missing\nmore detail")

    outcome, _ = run({"run_call": broken}, m.RunCall("actor_gen", 3))
    assert not outcome.ok
    assert outcome.error == "RuntimeError: weights missing"
    assert "Traceback" in caplog.text  # the traceback stays in the worker's log


def test_unknown_commands_and_unserialisable_outputs_are_errors():
    outcome, _ = run(builtin_handlers(), m.Export("/out"))
    assert (
        outcome.error
        == "no handler for 'export' (this worker has: init_process_group, ping, shutdown)"
    )
    outcome, _ = run({"bad": lambda inv: {"x": object()}}, m.Custom("bad"))
    assert outcome.error.startswith("MessageError: output of 'bad' is not JSON-serialisable")


@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_init_process_group_binds_the_gpu_so_nccl_starts_at_once(monkeypatch, device):
    """On CUDA the process group is made with ``device_id``: NCCL's communicator exists
    before a reallocation's batch_isend_irecv (only some ranks take part) can come first."""
    import torch
    import torch.distributed as dist

    calls: dict[str, object] = {}
    monkeypatch.setattr(dist, "is_initialized", lambda: False)
    monkeypatch.setattr(torch.cuda, "set_device", lambda d: calls.setdefault("set_device", d))
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(dist, "init_process_group", lambda **kw: calls.update(kw))
    monkeypatch.setattr(dist, "get_backend", lambda: calls["backend"])
    monkeypatch.setattr(dist, "get_rank", lambda: 1)
    monkeypatch.setattr(dist, "get_world_size", lambda: 2)
    msg = m.command_to_pb(m.Envelope(1, m.InitProcessGroup(timeout_s=9.0), {}))
    config = replace(CONFIG, device=device, local_rank=1, local_world_size=2)
    outcome = dispatch(builtin_handlers(), msg, WorkerContext(config), lambda _: None)
    assert outcome.ok, outcome.error
    if device == "cuda":
        assert calls["backend"] == "nccl" and calls["device_id"] == torch.device("cuda", 1)
        assert calls["set_device"] == torch.device("cuda", 1)
    else:
        assert calls["backend"] == "gloo" and calls["device_id"] is None
        assert "set_device" not in calls
    assert outcome.output == {"backend": calls["backend"], "rank": 1, "world_size": 2}


def test_one_line_errors():
    assert one_line(ValueError("")) == "ValueError"
    assert one_line(RuntimeError("a\nb")) == "RuntimeError: a"
    assert len(one_line(RuntimeError("x" * 2000))) == 500


def test_backoff_grows_to_its_cap():
    assert list(itertools.islice(backoff_delays(0.1, 2.0, 1.0), 6)) == [
        0.1,
        0.2,
        0.4,
        0.8,
        1.0,
        1.0,
    ]


# ---- real worker processes -------------------------------------------------------


def spawn(launch: WorkerSettings, rank: int) -> subprocess.Popen[str]:
    env = {**os.environ, **launch.for_rank(rank).to_env()}
    return subprocess.Popen(
        worker_command(), env=env, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True
    )


def test_a_wrong_token_is_refused_and_the_worker_says_so():
    with Coordinator(CoordinatorConfig(job_id="job-x", token="right", world_size=2)) as coord:
        launch = replace(LAUNCH, coordinator_addr=coord.address, world_size=2, token="wrong")
        proc = spawn(launch, rank=1)
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 3
    assert err.strip().splitlines()[-1] == (
        "rlhf-worker: registration refused: rank 1 of job 'job-x': token rejected by the "
        "coordinator (RLHF_TOKEN / RLHF_TOKEN_FILE must hold this job's token)"
    )


def test_a_worker_gives_up_when_no_coordinator_appears():
    address = f"127.0.0.1:{free_port()}"  # nothing listens there
    launch = replace(LAUNCH, coordinator_addr=address, world_size=1, connect_timeout_s=1.5)
    started = time.monotonic()
    proc = spawn(launch, rank=0)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 4
    last = err.strip().splitlines()[-1]
    assert last.startswith(
        f"rlhf-worker: rank 0 of job 'job-x': gave up after 1.5 s: coordinator at {address} unreachable"
    )
    assert time.monotonic() - started >= 1.5


def test_a_worker_started_first_waits_for_the_coordinator():
    port = free_port()
    launch = replace(
        LAUNCH, coordinator_addr=f"127.0.0.1:{port}", world_size=1, connect_timeout_s=60
    )
    proc = spawn(launch, rank=0)
    try:
        time.sleep(1.0)  # the worker is retrying by now
        config = CoordinatorConfig(
            job_id="job-x", token="s3cret", world_size=1, bind=f"127.0.0.1:{port}"
        )
        with Coordinator(config) as coord:
            coord.wait_for_workers(timeout_s=60)
            assert coord.call([0], m.Custom("ping"), timeout_s=30)[0].output["pid"] == proc.pid
        assert proc.wait(timeout=30) == 0  # leaving the block shut it down
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=10)


def test_the_control_plane_imports_neither_torch_nor_kubernetes():
    # torch is imported by the handlers that need it; kopf/kubernetes never.
    code = (
        "import sys, rlhf_worker.__main__, rlhf_worker.agent, rlhf_operator.coordinator.server, "
        "rlhf_operator.contract.launch; "
        "print(sorted(m for m in ('torch', 'kopf', 'kubernetes') if m in sys.modules))"
    )
    done = subprocess.run(
        [*worker_command()[:1], "-c", code], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_a_cuda_worker_without_its_gpu_says_so(monkeypatch):
    import torch
    import torch.distributed as dist

    monkeypatch.setattr(dist, "is_initialized", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    msg = m.command_to_pb(m.Envelope(1, m.InitProcessGroup(timeout_s=9.0), {}))
    config = replace(CONFIG, device="cuda", local_rank=1, local_world_size=2)
    outcome = dispatch(builtin_handlers(), msg, WorkerContext(config), lambda _: None)
    assert outcome.error == (
        "RuntimeError: RLHF_DEVICE=cuda and LOCAL_RANK=1, but this machine has 1 CUDA device(s)"
    )
