"""End to end: the coordinator in this process, workers as real subprocesses."""

from __future__ import annotations

import signal
import time

import pytest

from rlhf_operator.controlplane import messages as m
from rlhf_operator.coordinator.errors import CommandFailed, CommandTimeout, WorkerLost
from rlhf_operator.coordinator.state import WorkerState

READY_S = 30.0  # startup of a few Python processes on a busy 2-core machine


def test_workers_register_and_answer_commands(make_job):
    coordinator, workers = make_job(3)
    ready = coordinator.wait_for_workers(timeout_s=READY_S)
    assert sorted(ready) == [0, 1, 2]
    assert {info.pid for info in ready.values()} == {p.pid for p in workers.procs.values()}
    assert all(info.state is WorkerState.CONNECTED for info in ready.values())

    results = coordinator.call(range(3), m.Custom("echo"), args={"x": [1, 2]}, timeout_s=20)
    assert {rank: r.output for rank, r in results.items()} == {
        rank: {"rank": rank, "args": {"x": [1, 2]}} for rank in range(3)
    }
    pings = coordinator.call([1], m.Custom("ping"), timeout_s=20)
    assert pings[1].output["pid"] == workers.procs[1].pid


def test_progress_and_metrics_reach_the_callback(make_job):
    reports = []
    coordinator, _ = make_job(2, on_report=reports.append)
    coordinator.wait_for_workers(timeout_s=READY_S)
    coordinator.call(range(2), m.Custom("echo"), timeout_s=20)
    progress = {(r.rank, r.report.message) for r in reports if isinstance(r.report, m.Progress)}
    metrics = {
        (r.rank, r.report.values["echo_rank"]) for r in reports if isinstance(r.report, m.Metrics)
    }
    assert progress == {(0, "echoing"), (1, "echoing")}
    assert metrics == {(0, 0.0), (1, 1.0)}


def test_process_group_from_the_launch_env_all_reduces(make_job):
    coordinator, workers = make_job(3)
    coordinator.wait_for_workers(timeout_s=READY_S)
    init = coordinator.call(range(3), m.InitProcessGroup(timeout_s=60), timeout_s=120)
    assert {r.output["backend"] for r in init.values()} == {"gloo"}
    assert sorted(r.output["rank"] for r in init.values()) == [0, 1, 2]
    reduced = coordinator.call(range(3), m.Custom("all_reduce"), timeout_s=60)
    assert [reduced[r].output["sum"] for r in range(3)] == [6.0, 6.0, 6.0]  # 1 + 2 + 3
    # Shutdown leaves the process group, then every worker exits cleanly.
    coordinator.shutdown(timeout_s=30)
    exits = workers.wait_all(timeout_s=30)
    assert {rank: code for rank, (code, _) in exits.items()} == {0: 0, 1: 0, 2: 0}


def test_a_raising_handler_gives_a_one_line_error_and_the_worker_lives_on(make_job):
    coordinator, _ = make_job(2)
    coordinator.wait_for_workers(timeout_s=READY_S)
    with pytest.raises(CommandFailed) as caught:
        coordinator.call([1], m.Custom("fail"), timeout_s=20)
    assert caught.value.rank == 1
    assert caught.value.message == "ValueError: bad input on rank 1"
    assert str(caught.value) == "rank 1: fail failed: ValueError: bad input on rank 1"
    unknown = coordinator.send([0], m.Custom("no_such_command"), timeout_s=20)[0]
    with pytest.raises(CommandFailed, match="no handler for 'no_such_command'"):
        unknown.result(timeout=20)
    with pytest.raises(CommandTimeout, match=r"rank 0: sleep got no result within 0\.3 s"):
        coordinator.call([0], m.Custom("sleep"), args={"seconds": 1.5}, timeout_s=0.3)
    # The workers live on: rank 0 answers once its late sleep is over.
    assert coordinator.call([0, 1], m.Custom("echo"), timeout_s=20)[1].output["rank"] == 1


def test_sigkilled_worker_fails_its_pending_commands_promptly(make_job):
    coordinator, workers = make_job(2)
    coordinator.wait_for_workers(timeout_s=READY_S)
    pending = coordinator.send(range(2), m.Custom("sleep"), args={"seconds": 3})
    time.sleep(0.5)  # both are inside the handler now
    workers.kill(1)
    with pytest.raises(WorkerLost) as caught:
        pending[1].result(timeout=10)  # a hang would end here, not in the CI's timeout
    assert caught.value.rank == 1
    assert "worker rank 1 lost" in str(caught.value)
    assert pending[0].result(timeout=20).output == {"slept": True}
    assert coordinator.workers()[1].state is WorkerState.LOST
    with pytest.raises(WorkerLost, match="rank 1"):  # later commands fail at once
        coordinator.send([1], m.Custom("echo"))[1].result(timeout=1)
    # A restarted process takes the rank back (what the executor does before resuming).
    workers.start([1])
    coordinator.wait_for_workers(timeout_s=READY_S)
    assert coordinator.call([1], m.Custom("echo"), timeout_s=20)[1].output["rank"] == 1


def test_a_frozen_worker_is_lost_by_missed_heartbeats(make_job):
    coordinator, workers = make_job(2, heartbeat_timeout_s=2.0)
    coordinator.wait_for_workers(timeout_s=READY_S)
    # SIGSTOP keeps the connection open: only the missing heartbeats can tell.
    workers.kill(0, signal.SIGSTOP)
    try:
        pending = coordinator.send([0], m.Custom("echo"))[0]
        with pytest.raises(WorkerLost, match="no heartbeat for"):
            pending.result(timeout=15)
    finally:
        workers.kill(0, signal.SIGKILL)


def test_shutdown_ends_every_worker(make_job):
    coordinator, workers = make_job(3)
    coordinator.wait_for_workers(timeout_s=READY_S)
    coordinator.shutdown(timeout_s=20)
    exits = workers.wait_all(timeout_s=20)
    assert {rank: code for rank, (code, _) in exits.items()} == {0: 0, 1: 0, 2: 0}
    assert all(w.state is WorkerState.EXITED for w in coordinator.workers().values())


def test_workers_exit_when_the_coordinator_disappears(make_job):
    coordinator, workers = make_job(2)
    coordinator.wait_for_workers(timeout_s=READY_S)
    coordinator.stop()  # no Shutdown command: as if the coordinator pod died
    exits = workers.wait_all(timeout_s=20)
    for code, err in exits.values():
        assert code == 5
        assert "lost the coordinator" in err.strip().splitlines()[-1]


def test_leaving_the_coordinator_by_an_error_ends_even_busy_workers(make_job):
    coordinator, workers = make_job(2)
    coordinator.wait_for_workers(timeout_s=READY_S)
    busy = coordinator.send(range(2), m.Custom("sleep"), args={"seconds": 120})
    error = RuntimeError("the iteration failed")
    coordinator.__exit__(RuntimeError, error, None)  # as `with Coordinator(...)` does on an error
    exits = workers.wait_all(timeout_s=30)  # far less than the handlers' 120 s
    assert {rank: code for rank, (code, _) in exits.items()} == {0: 5, 1: 5}
    for future in busy.values():
        with pytest.raises(WorkerLost, match="the coordinator stopped"):
            future.result(timeout=1)
