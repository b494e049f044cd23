"""The reallocation benchmark still runs and checks its results (a tiny model, one repeat)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_the_realloc_benchmark_prints_every_pair() -> None:
    done = subprocess.run(
        [sys.executable, "benchmarks/realloc.py", "--small", "--repeats", "1"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
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
