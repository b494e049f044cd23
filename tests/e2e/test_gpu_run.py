"""Tiny jobs end to end on this machine's GPU (`make test-gpu`; skipped without CUDA).

A job that asks for GPUs (``resources.gpus``) runs in local mode with one worker per
GPU over NCCL, everything on the device: bf16 compute weights, fp32 master state,
the data path under device checks (tests/conftest.py), reallocation between layouts,
and, with CUDA vLLM installed, vLLM colocated with training (sleep, wake-up, weight
updates through CUDA IPC). Each run's metrics hold the planned and the measured peak
of every call, which the test compares.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from rlhf_operator.coordinator.outputs import OutputDir
from rlhf_worker.rollout.engine import vllm_available

from .conftest import VLLM_ARCH, tiny_job
from .test_local_run import rlhfctl_run

pytestmark = [
    pytest.mark.timeout(900),
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


def gpu_type() -> str:
    """This GPU's planner profile (the device name says which; H100 if none matches)."""
    name = torch.cuda.get_device_name(0)
    for profile in ("H200", "H100", "A100-80GB", "L40S"):
        if profile.split("-")[0] in name:
            return profile
    return "H100"


def gpu_job(name: str, algo: str, **spec: Any) -> dict[str, Any]:
    job = tiny_job(name, algo, **spec)
    job["spec"]["resources"] = {"gpus": 1, "gpusPerNode": 1, "gpuType": gpu_type()}
    for role in ("actor", "ref", "critic"):
        if role in job["spec"]["models"]:
            job["spec"]["models"][role]["dtype"] = "bfloat16"
    return job


def check_run(out: Path, result: Any) -> list[dict[str, Any]]:
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads(result.stdout)["status"] == "Succeeded"
    records = OutputDir(out).read_metrics()
    for record in records:
        for call, timing in record["calls"].items():
            measured, planned = timing.get("peak_bytes"), timing.get("estimated_peak_bytes")
            if measured and planned:
                print(f"{call}: peak {measured / 2**20:.1f} MiB, plan {planned / 2**20:.1f} MiB")
    return records


def test_tiny_ppo_on_the_gpu(job_file: Any, tmp_path: Path) -> None:
    out = tmp_path / "out"
    records = check_run(out, rlhfctl_run(job_file(gpu_job("gpu-ppo", "ppo")), out))
    assert len(records) == 2


def test_tiny_grpo_on_the_gpu(job_file: Any, tmp_path: Path) -> None:
    job = gpu_job("gpu-grpo", "grpo", algorithm={"name": "grpo", "grpo": {"groupSize": 4}})
    out = tmp_path / "out"
    check_run(out, rlhfctl_run(job_file(job), out))


@pytest.mark.skipif(not vllm_available(), reason="needs vLLM (CUDA build) in this python")
def test_tiny_grpo_with_vllm_colocated_on_the_gpu(job_file: Any, tmp_path: Path) -> None:
    job = gpu_job(
        "gpu-grpo-vllm",
        "grpo",
        algorithm={"name": "grpo", "grpo": {"groupSize": 4}},
        rollout={"backend": "vllm", "maxNewTokens": 8},
    )
    for role in ("actor", "ref"):
        job["spec"]["models"][role]["architecture"] = VLLM_ARCH
    out = tmp_path / "out"
    for record in check_run(out, rlhfctl_run(job_file(job), out)):
        flat = {**record, **record.get("extra", {})}
        print({k: v for k, v in flat.items() if "weight_update" in k or "vllm_memory" in k})
        assert flat["actor_gen/weight_update_seconds"] > 0
        assert 0 < flat["actor_gen/vllm_memory_utilization"] < 1
        assert flat["actor_gen/logprob_mismatch_mean"] < 0.1  # bf16 kernels differ
