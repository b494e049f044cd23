"""The coordinator's worker table on a fake clock: admission, loss, deadlines."""

from __future__ import annotations

import pytest

from rlhf_operator.controlplane import messages as m
from rlhf_operator.controlplane.messages import Registration
from rlhf_operator.coordinator.errors import CommandFailed, CommandTimeout, Rejected, WorkerLost
from rlhf_operator.coordinator.state import WorkerState, WorkerTable


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def reg(
    rank: int, token: str = "secret", job: str = "job-a", world: int = 2, pid: int = 10
) -> Registration:
    return Registration(job, rank, world, rank, 0, "host-a", pid + rank, "cpu", token)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def table(clock: Clock) -> WorkerTable:
    return WorkerTable("job-a", "secret", world_size=2, heartbeat_timeout_s=5.0, clock=clock)


def connect(table: WorkerTable, rank: int, **kw) -> str:
    session = table.register(reg(rank, **kw))
    table.open_stream(rank, session)
    return session


def test_registration_is_checked_with_messages_naming_job_and_rank(table):
    with pytest.raises(Rejected) as wrong_token:
        table.register(reg(1, token="guess"))
    assert wrong_token.value.code == "UNAUTHENTICATED"
    assert wrong_token.value.message.startswith("rank 1 of job 'job-a': token rejected")
    with pytest.raises(Rejected, match="this coordinator runs job 'job-a', not 'job-b'"):
        table.register(reg(0, job="job-b"))
    with pytest.raises(Rejected, match="WORLD_SIZE=3 but the job has 2"):
        table.register(reg(0, world=3))
    with pytest.raises(Rejected, match="rank 2 of job 'job-a': rank out of range"):
        table.register(reg(2))
    assert table.snapshot() == {}


def test_results_settle_futures(table):
    s0, s1 = connect(table, 0), connect(table, 1)
    futures = table.submit([0, 1], m.Custom("echo"), {}, timeout_s=None)
    table.on_message(0, s0, m.Outcome(1, ok=True, output={"r": 0}, seconds=0.1))
    table.on_message(1, s1, m.Outcome(1, ok=False, error="ValueError: no"))
    assert futures[0].result(0).output == {"r": 0}
    with pytest.raises(CommandFailed, match="rank 1: echo failed: ValueError: no"):
        futures[1].result(0)


def test_commands_reach_the_outbound_queue_in_order(table):
    session = table.register(reg(0))
    queue = table.open_stream(0, session)
    table.submit([0], m.Custom("a"), {"k": 1}, timeout_s=3.0)
    table.submit([0], m.Shutdown(), {}, timeout_s=None)
    first, second = queue.get_nowait(), queue.get_nowait()
    assert (first.command, first.args, first.deadline_s) == (m.Custom("a"), {"k": 1}, 3.0)
    assert second.command == m.Shutdown() and second.command_id > first.command_id


def test_silence_past_the_heartbeat_timeout_loses_the_worker(table, clock):
    s0, _ = connect(table, 0), connect(table, 1)
    futures = table.submit([0, 1], m.Custom("echo"), {}, timeout_s=None)
    clock.now += 4.0
    table.heartbeat(0, s0)
    clock.now += 2.0  # rank 1 silent for 6 s, rank 0 for 2 s
    table.check()
    with pytest.raises(
        WorkerLost, match=r"worker rank 1 lost: no heartbeat for 6.0 s \(timeout 5 s\)"
    ):
        futures[1].result(0)
    assert not futures[0].done()
    assert table.snapshot()[1].state is WorkerState.LOST
    with pytest.raises(Rejected, match="session ended"):  # a lost worker cannot come back
        table.heartbeat(1, table._workers[1].session_id)


def test_a_broken_stream_fails_pending_commands_at_once(table):
    s0 = connect(table, 0)
    future = table.submit([0], m.Custom("sleep"), {}, timeout_s=None)[0]
    table.stream_closed(0, s0, "control stream broken")
    with pytest.raises(WorkerLost, match="rank 0 lost: control stream broken"):
        future.result(0)


def test_a_closed_stream_after_shutdown_is_an_exit_not_a_loss(table):
    s0 = connect(table, 0)
    future = table.submit([0], m.Shutdown(), {}, timeout_s=None)[0]
    table.on_message(0, s0, m.Outcome(future_id(table), ok=True))
    table.stream_closed(0, s0, "the worker closed its control stream")
    assert table.snapshot()[0].state is WorkerState.EXITED
    assert future.result(0).command == "shutdown"


def future_id(table: WorkerTable) -> int:
    return next(iter(table._workers[0].pending))


def test_deadlines_fail_commands_and_late_results_are_ignored(table, clock):
    s0 = connect(table, 0)
    future = table.submit([0], m.Custom("slow"), {}, timeout_s=2.0)[0]
    command_id = future_id(table)
    clock.now += 1.0
    table.heartbeat(0, s0)
    table.check()
    assert not future.done()
    clock.now += 1.5
    table.check()
    with pytest.raises(CommandTimeout, match="rank 0: slow got no result within 2 s"):
        future.result(0)
    table.on_message(0, s0, m.Outcome(command_id, ok=True))  # too late: no effect
    assert table.snapshot()[0].state is WorkerState.CONNECTED


def test_commands_to_absent_ranks_fail_immediately(table):
    session = table.register(reg(1))
    futures = table.submit([0, 1, 5], m.Custom("echo"), {}, timeout_s=None)
    with pytest.raises(WorkerLost, match="rank 0 lost: never registered"):
        futures[0].result(0)
    with pytest.raises(WorkerLost, match="control stream is not open"):
        futures[1].result(0)
    with pytest.raises(WorkerLost, match=r"no such rank \(world size 2\)"):
        futures[5].result(0)
    assert session


def test_a_new_registration_replaces_the_old_session(table):
    old = connect(table, 0)
    future = table.submit([0], m.Custom("echo"), {}, timeout_s=None)[0]
    new = table.register(reg(0, pid=99))
    assert new != old
    with pytest.raises(WorkerLost, match="replaced by a new registration from host-a pid 99"):
        future.result(0)
    with pytest.raises(Rejected) as stale:
        table.heartbeat(0, old)
    assert stale.value.code == "NOT_FOUND"
    table.open_stream(0, new)
    assert table.snapshot()[0].state is WorkerState.CONNECTED


def test_wait_connected_names_the_missing_ranks(table):
    connect(table, 0)
    assert table.wait_connected([0], timeout_s=0.0) == {}
    assert table.wait_connected([0, 1], timeout_s=0.01) == {1: "never registered"}
