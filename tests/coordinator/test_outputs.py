"""The output directory contract."""

from __future__ import annotations

import json
from pathlib import Path

from rlhf_operator.coordinator.outputs import (
    CallTiming,
    IterationRecord,
    OutputDir,
    format_progress,
)


def _record(i: int) -> IterationRecord:
    return IterationRecord(
        iteration=i,
        reward_mean=0.5,
        kl=0.01,
        seconds=2.0,
        tokens_per_second=100.0,
        samples_per_second=8.0,
        calls={"actor_gen": CallTiming(1.0, 0.8, 2048, 4096)},
        extra={"loss": 0.1},
    )


def test_metrics_lines_hold_the_documented_fields(tmp_path: Path) -> None:
    out = OutputDir(tmp_path)
    out.create()
    out.append_metrics(_record(1))
    line = json.loads(out.metrics.read_text().splitlines()[0])
    for key in ("iteration", "reward_mean", "kl", "seconds", "tokens_per_second", "calls"):
        assert key in line
    assert line["calls"]["actor_gen"] == {
        "seconds": 1.0,
        "estimated_seconds": 0.8,
        "peak_bytes": 2048,
        "estimated_peak_bytes": 4096,
    }
    assert line["loss"] == 0.1


def test_resume_drops_records_past_the_checkpoint_and_torn_lines(tmp_path: Path) -> None:
    out = OutputDir(tmp_path)
    out.create()
    for i in (1, 2, 3):
        out.append_metrics(_record(i))
    with out.metrics.open("a") as fh:
        fh.write('{"iteration": 4, "rew')  # a crash mid-write
    assert [r["iteration"] for r in out.read_metrics()] == [1, 2, 3]
    out.truncate_metrics(2)
    assert [r["iteration"] for r in out.read_metrics()] == [1, 2]


def test_progress_line() -> None:
    line = format_progress(5, 20, 0.4321, 0.0123, 1234.5, 95)
    assert line.startswith("[#####...............] iter 5/20")
    assert "reward 0.432" in line and "kl 0.0123" in line and "1,234 tok/s" in line
    assert line.endswith("eta 1:35")
