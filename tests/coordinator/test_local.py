"""Local mode's launch of its workers, without starting any."""

from __future__ import annotations

from pathlib import Path

import pytest

from rlhf_operator.api.manifests import load_jobs
from rlhf_operator.contract.launch import WorkerSettings
from rlhf_operator.coordinator.local import JobFailed, LocalRun
from rlhf_operator.coordinator.outputs import OutputDir
from rlhf_operator.planner import plan_job

ROOT = Path(__file__).resolve().parents[2]


def local_run(tmp_path: Path) -> LocalRun:
    (job,), _ = load_jobs(str(ROOT / "examples/tiny-ppo.yaml"))
    return LocalRun(job, plan_job(job), ROOT / "examples", OutputDir(tmp_path), metrics_port=None)


def test_workers_get_the_console_s_log_level(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RLHF_LOG_LEVEL", "debug")
    settings = local_run(tmp_path)._worker_settings("127.0.0.1:4000", "t0k")
    assert settings.log_level == "DEBUG" and settings.socket_ifname == "lo"
    env = settings.for_rank(1, local_rank=1).to_env()
    assert WorkerSettings.from_env(env) == settings.for_rank(1, local_rank=1)


def test_a_bad_log_level_fails_the_job_with_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RLHF_LOG_LEVEL", "loud")
    with pytest.raises(JobFailed, match="cannot start the workers: RLHF_LOG_LEVEL='LOUD'"):
        local_run(tmp_path)._start_workers("127.0.0.1:4000", "t0k")
