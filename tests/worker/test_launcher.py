"""The worker pod's launcher: one process per GPU, signals forwarded, the failing rank reported.

Real processes: the launcher (`python -m rlhf_worker.launcher`) runs stand-in workers
(`RLHF_WORKER_COMMAND`) that read the settings it gives them.
"""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest

from rlhf_operator.controlplane import exits
from rlhf_worker import launcher
from tests.contract.launches import LOCAL

POD = replace(LOCAL, world_size=4, local_world_size=2, rank=2, node_rank=1)

# A stand-in worker: prints its settings, then does what STANDIN_<RANK> says.
STANDIN = """
import os, sys, time
rank = os.environ["RANK"]
print(f"rank {rank} local {os.environ['LOCAL_RANK']} of {os.environ['LOCAL_WORLD_SIZE']}", flush=True)
what = os.environ.get("STANDIN_" + rank, "exit 0")
if what.startswith("exit"):
    code = int(what.split()[1])
    if code:
        with open(os.environ["RLHF_TERMINATION_LOG"], "w") as f:
            f.write(f"rank {rank} gave up")
    sys.exit(code)
if what == "crash":
    raise RuntimeError("boom in rank " + rank)
time.sleep(600)  # "sleep"
"""


def start(tmp_path: Path, **standins: str) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        **POD.to_env(),
        "RLHF_WORKER_COMMAND": shlex.join([sys.executable, "-c", STANDIN]),
        exits.TERMINATION_LOG_ENV: str(tmp_path / "termination-log"),
        **{f"STANDIN_{rank}": what for rank, what in standins.items()},
    }
    return subprocess.Popen(
        [sys.executable, "-m", "rlhf_worker.launcher"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )


def children(pid: int) -> list[int]:
    return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split()[2]
    except FileNotFoundError:
        return False
    return state != "Z"


def wait_until(predicate, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def test_the_cause_is_reported_before_a_rank_that_only_lost_its_peer() -> None:
    def ended(rank: int, code: int) -> launcher.Worker:
        process = subprocess.Popen([sys.executable, "-c", f"raise SystemExit({code})"])
        process.wait()
        return launcher.Worker(rank, process, Path("/nonexistent"))

    lost, failed, fine = ended(0, exits.PEER_LOST), ended(1, 3), ended(2, 0)
    assert launcher.first_failure([lost, failed, fine]) is failed
    assert launcher.first_failure([lost, fine]) is lost
    assert launcher.first_failure([fine]) is None
    assert launcher.exit_code(-signal.SIGKILL) == 137 and launcher.exit_code(3) == 3


def test_every_rank_gets_its_settings_and_all_succeed(tmp_path: Path) -> None:
    proc = start(tmp_path)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out
    lines = sorted(line for line in out.decode().splitlines() if line.startswith("rank"))
    assert lines == ["rank 2 local 0 of 2", "rank 3 local 1 of 2"]
    assert not (tmp_path / "termination-log").exists()


def test_a_failed_rank_stops_the_others_and_the_pod_ends_with_its_reason(tmp_path: Path) -> None:
    proc = start(tmp_path, **{"2": "sleep", "3": "exit 3"})
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 3, out
    reason = (tmp_path / "termination-log").read_text()
    assert reason == "rlhf-launcher: rank 3: rank 3 gave up"


def test_a_crash_without_a_reason_is_reported_by_its_last_line(tmp_path: Path) -> None:
    proc = start(tmp_path, **{"2": "sleep", "3": "crash"})
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 1, out
    reason = (tmp_path / "termination-log").read_text()
    assert reason == "rlhf-launcher: rank 3: RuntimeError: boom in rank 3"


def test_a_killed_rank_counts_as_its_signal(tmp_path: Path) -> None:
    proc = start(tmp_path, **{"2": "sleep", "3": "sleep"})
    wait_until(lambda: len(children(proc.pid)) == 2, "both ranks")
    os.kill(children(proc.pid)[1], signal.SIGKILL)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 137, out
    assert (tmp_path / "termination-log").read_text().startswith("rlhf-launcher: rank ")
    assert "killed by SIGKILL" in (tmp_path / "termination-log").read_text()


def test_sigterm_reaches_every_rank(tmp_path: Path) -> None:
    proc = start(tmp_path, **{"2": "sleep", "3": "sleep"})
    wait_until(lambda: len(children(proc.pid)) == 2, "both ranks")
    ranks = children(proc.pid)
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM
    assert not any(alive(pid) for pid in ranks)
    assert not (tmp_path / "termination-log").exists()  # a stop, not a failure


def test_the_ranks_die_with_a_killed_launcher(tmp_path: Path) -> None:
    proc = start(tmp_path, **{"2": "sleep", "3": "sleep"})
    wait_until(lambda: len(children(proc.pid)) == 2, "both ranks")
    ranks = children(proc.pid)
    proc.kill()
    proc.communicate(timeout=60)
    wait_until(lambda: not any(alive(pid) for pid in ranks), "the ranks to die with it")


def test_per_rank_logs_in_local_mode(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RLHF_LOG_DIR", str(tmp_path))
    proc = start(tmp_path)
    proc.communicate(timeout=60)
    assert proc.returncode == 0
    assert (tmp_path / "worker-3.log").read_text() == "rank 3 local 1 of 2\n"


def test_settings_that_run_past_the_world_are_refused(tmp_path: Path) -> None:
    env = {**POD.to_env(), "RANK": "3", exits.TERMINATION_LOG_ENV: str(tmp_path / "log")}
    assert launcher.main(env) == 2
    assert (tmp_path / "log").read_text() == (
        "rlhf-launcher: RANK=3 with LOCAL_WORLD_SIZE=2 runs past WORLD_SIZE=4"
    )
