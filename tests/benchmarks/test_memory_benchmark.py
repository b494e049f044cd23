"""The memory benchmark still runs: every printed row's measurement near its estimate."""

from __future__ import annotations

from .running import run_benchmark


def test_the_memory_benchmark_measures_every_call_near_its_estimate() -> None:
    done = run_benchmark("memory.py", "--quick", "--layout", "dp2")
    rows = [line.split() for line in done.stdout.splitlines() if line.startswith("tiny")]
    # 2 dtypes x 3 calls, each with its measured and estimated MiB and their ratio.
    assert sorted((r[2], r[3]) for r in rows) == sorted(
        (d, c) for d in ("bfloat16", "float32") for c in ("generate", "inference", "train")
    )
    for row in rows:
        measured, estimated, ratio = (float(x) for x in row[4:7])
        assert measured > 0 and estimated > 0 and 0.85 <= ratio <= 1.15, row
    assert "llama70b-ppo-64gpu.yaml" in done.stdout  # and the estimator-only part
