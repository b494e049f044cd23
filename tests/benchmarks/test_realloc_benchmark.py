"""The reallocation benchmark still runs and checks its results (a tiny model, one repeat)."""

from __future__ import annotations

from .running import run_benchmark


def test_the_realloc_benchmark_prints_every_pair() -> None:
    done = run_benchmark("realloc.py", "--small", "--repeats", "1")
    lines = done.stdout.splitlines()
    header = next(line for line in lines if line.startswith("pair"))
    assert "steady/floor" in header and "floor s" in header and "steady/prebuilt" in header
    assert "msgs" in header and "in place s" in header
    rows = [line for line in lines if "->" in line]
    assert [row.split("->")[0].strip() for row in rows] == [
        "tp2dp2",
        "tp4",
        "pp2tp2",
        "tp2@01",
        "tp1@0",
    ]
    # Every row has all its columns, each a number (a ratio of 0 would mean a failed measurement).
    for row in rows:
        figures = [float(x) for x in row.split("->")[1].split()[1:]]
        assert len(figures) == 29 and figures[24] > 0  # steady/prebuilt
        assert figures[-2] > 0 and figures[-1] == 0  # in place: its ratio; no local copies
