"""Building RLHFJobs for the planner tests."""

from __future__ import annotations

from typing import Any

from rlhf_operator.api.job import RLHFJob


def make_job(
    preset: str = "llama2-7b",
    *,
    gpus: int | None = 8,
    per_node: int = 8,
    gpu_type: str = "H100",
    local_slots: int | None = None,
    algorithm: str = "ppo",
    batch: int = 256,
    prompt: int = 128,
    gen: int = 128,
    minibatches: int = 4,
    backend: str = "vllm",
    strategy: str = "search",
    calls: dict[str, Any] | None = None,
    critic: str | None = None,
) -> RLHFJob:
    model = {"source": {"path": "/m"}, "architecture": {"preset": preset}}
    models: dict[str, Any] = {"actor": model, "ref": model, "reward": model}
    if algorithm in ("ppo", "safe-rlhf"):
        models["critic"] = (
            {"source": {"path": "/c"}, "architecture": {"preset": critic}} if critic else model
        )
    if algorithm == "safe-rlhf":
        models["cost"] = model
    resources: dict[str, Any] = (
        {"local": {"slots": local_slots}}
        if local_slots
        else {"gpus": gpus, "gpusPerNode": per_node, "gpuType": gpu_type}
    )
    placement: dict[str, Any] = {"strategy": strategy}
    if calls:
        placement["calls"] = calls
    return RLHFJob.model_validate(
        {
            "apiVersion": "rlhf.dev/v1alpha1",
            "kind": "RLHFJob",
            "metadata": {"name": "t"},
            "spec": {
                "models": models,
                "algorithm": {"name": algorithm},
                "rollout": {"backend": backend, "maxNewTokens": gen},
                "data": {
                    "prompts": {"path": "/p.jsonl"},
                    "batchSize": batch,
                    "maxPromptLength": prompt,
                },
                "training": {"minibatches": minibatches},
                "resources": resources,
                "placement": placement,
            },
        }
    )
