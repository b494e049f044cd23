"""Helpers for end-to-end runs of tiny jobs in local mode (real processes, gloo on CPU)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
PROMPTS = ROOT / "examples" / "data" / "prompts.jsonl"

# Smaller than the tiny preset so each run takes seconds: 2 layers, hidden 128.
SMALL = {
    "config": {
        "hiddenSize": 128,
        "intermediateSize": 256,
        "numHiddenLayers": 2,
        "numAttentionHeads": 4,
        "numKeyValueHeads": 2,
        "vocabSize": 512,
        "maxPositionEmbeddings": 256,
    }
}

# What vLLM's kernels want: head_dim >= 64 (its CPU attention); tp=2 splits 4 heads and
# 2 key/value heads.
VLLM_ARCH = {
    "config": {
        "hiddenSize": 256,
        "intermediateSize": 512,
        "numHiddenLayers": 2,
        "numAttentionHeads": 4,
        "numKeyValueHeads": 2,
        "vocabSize": 512,
        "maxPositionEmbeddings": 256,
    }
}

# GRPO on 2 slots: generation with tp=2 over both, training dp=2, each frozen
# role on one slot (every call's layout differs from the actor's home).
GRPO_TP2_GENERATION = {
    "strategy": "manual",
    "calls": {
        "actor_gen": {"mesh": "0:0-1", "tp": 2},
        "ref_inf": {"mesh": "0:1"},
        "reward_inf": {"mesh": "0:0"},
        "actor_train": {"mesh": "0:0-1", "dp": 2},
    },
}


def tiny_job(name: str, algo: str = "ppo", slots: int = 2, **spec: Any) -> dict[str, Any]:
    model = {"source": {"tiny": {"seed": 0}}, "architecture": SMALL, "dtype": "float32"}
    models: dict[str, Any] = {
        "actor": model,
        "ref": model,
        "reward": {"rewardFunction": "rlhf_worker.rewards:vowel_fraction"},
    }
    if algo == "ppo":
        models["critic"] = {**model, "source": {"tiny": {"seed": 1}}}
    job: dict[str, Any] = {
        "apiVersion": "rlhf.dev/v1alpha1",
        "kind": "RLHFJob",
        "metadata": {"name": name},
        "spec": {
            "models": copy.deepcopy(models),
            "algorithm": {"name": algo},
            "rollout": {"maxNewTokens": 8},
            "data": {"prompts": {"path": str(PROMPTS)}, "batchSize": 4, "maxPromptLength": 16},
            "training": {"iterations": 2, "actorLearningRate": 1e-3, "criticLearningRate": 1e-3},
            "resources": {"local": {"slots": slots}},
            "placement": {"strategy": "colocated"},
            "checkpoint": {"interval": 1},
        },
    }
    for key, value in spec.items():
        job["spec"][key] = (
            {**job["spec"].get(key, {}), **value} if isinstance(value, dict) else value
        )
    return job


def write_job(path: Path, job: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(job, sort_keys=False))
    return path


@pytest.fixture
def job_file(tmp_path: Path):  # type: ignore[no-untyped-def]
    def make(job: dict[str, Any]) -> Path:
        return write_job(tmp_path / f"{job['metadata']['name']}.yaml", job)

    return make
