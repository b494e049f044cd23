"""The executor's dispatch loop, against a stand-in coordinator (no processes)."""

from __future__ import annotations

import concurrent.futures as cf
import threading
from pathlib import Path
from typing import Any

import pytest

from rlhf_operator.api.job import RLHFJob
from rlhf_operator.coordinator import executor
from rlhf_operator.coordinator.executor import JobRunner
from rlhf_operator.coordinator.outputs import OutputDir
from rlhf_operator.coordinator.schedule import EndIteration, Step
from rlhf_operator.coordinator.state import CommandResult
from rlhf_operator.planner import plan_job
from tests.e2e.conftest import tiny_job


class SlowRankCoordinator:
    """Rank 0 answers at once, rank 1 only when the test releases it."""

    def __init__(self) -> None:
        self.release = threading.Event()

    def send(self, ranks: Any, command: Any, args: Any, timeout_s: Any) -> dict[int, cf.Future]:
        futures: dict[int, cf.Future] = {rank: cf.Future() for rank in ranks}
        futures[0].set_result(CommandResult(0, "x", {}, 0.0))

        def answer_later() -> None:
            self.release.wait(10)
            futures[1].set_result(CommandResult(1, "x", {}, 0.0))

        threading.Thread(target=answer_later, daemon=True).start()
        return futures


def test_dispatch_waits_for_the_slow_rank_without_spinning(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    job = RLHFJob.model_validate(tiny_job("dispatch", "grpo"))
    coordinator = SlowRankCoordinator()
    runner = JobRunner(coordinator, job, plan_job(job), OutputDir(tmp_path), tmp_path)  # type: ignore[arg-type]
    runner.steps = [Step(0, EndIteration((0, 1)), ())]
    waits: list[int] = []
    real_wait = cf.wait

    def counting_wait(futures: Any, **kwargs: Any) -> Any:
        waits.append(len(futures))
        if len(waits) == 1:  # the loop is blocked on rank 1 now: let it answer
            threading.Timer(0.2, coordinator.release.set).start()
        return real_wait(futures, **kwargs)

    monkeypatch.setattr(executor.cf, "wait", counting_wait)
    done = runner._dispatch(iteration=1)
    assert set(done) == {0}
    # One wait, on rank 1's future alone: rank 0's finished future would make every
    # wait return at once and the loop spin (holding the GIL the gRPC threads need).
    assert waits == [1]
