"""How the vLLM engine is started, put to sleep and woken, against a fake ``vllm`` module
that records what it is asked (runs without vLLM and without a GPU: CUDA's memory
queries and torch's cache release are replaced by recorders)."""

from __future__ import annotations

import os
import sys
import types
from pathlib import Path
from types import SimpleNamespace
from typing import Any, ClassVar

import pytest
import torch

from rlhf_operator.api.manifests import load_jobs
from rlhf_operator.contract.plan import ENGINE_TERMS, engine_memory_bytes
from rlhf_operator.planner import plan_job
from rlhf_worker.rollout import engine as engine_module
from rlhf_worker.rollout.settings import (
    START_MARGIN_BYTES,
    EngineMemoryError,
    EngineSettings,
    memory_utilization,
    sleep_level,
)
from rlhf_worker.runtime import generate as runtime_generate

ROOT = Path(__file__).resolve().parents[3]
GIB = 2**30


class FakeLLM:
    """Records its constructor's arguments and every call, in order, into `events`."""

    events: ClassVar[list[Any]] = []

    def __init__(self, **kwargs: Any):
        self.kwargs = kwargs
        FakeLLM.events.append(("LLM", kwargs))

    def sleep(self, level: int) -> None:
        FakeLLM.events.append(("sleep", level))

    def wake_up(self, tags: list[str] | None = None) -> None:
        FakeLLM.events.append(("wake_up", tags))

    def collective_rpc(self, method: str, args: tuple[Any, ...] = ()) -> list[Any]:
        FakeLLM.events.append(("rpc", method))
        return [0]

    def reset_prefix_cache(self) -> None:
        FakeLLM.events.append(("reset_prefix_cache",))

    def generate(self, inputs: list[Any], params: list[Any], use_tqdm: bool) -> list[Any]:
        FakeLLM.events.append(("generate", len(inputs)))
        done = SimpleNamespace(token_ids=[3], logprobs=[{3: SimpleNamespace(logprob=-1.0)}])
        return [SimpleNamespace(outputs=[done]) for _ in inputs]


@pytest.fixture
def fake_vllm(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """A ``vllm`` package with LLM, SamplingParams, TokensPrompt and a platform that sleeps,
    and CUDA's free-memory query at 70 of 80 GiB free."""
    FakeLLM.events = []
    vllm = types.ModuleType("vllm")
    vllm.LLM = FakeLLM  # type: ignore[attr-defined]
    vllm.SamplingParams = lambda **kw: kw  # type: ignore[attr-defined]
    inputs = types.ModuleType("vllm.inputs")
    inputs.TokensPrompt = lambda **kw: kw  # type: ignore[attr-defined]
    platforms = types.ModuleType("vllm.platforms")
    platforms.current_platform = SimpleNamespace(  # type: ignore[attr-defined]
        is_sleep_mode_available=lambda: True
    )
    for name, module in {"vllm": vllm, "vllm.inputs": inputs, "vllm.platforms": platforms}.items():
        monkeypatch.setitem(sys.modules, name, module)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (70 * GIB, 80 * GIB))
    monkeypatch.setattr(
        engine_module, "hand_back_cached", lambda device: FakeLLM.events.append(("empty_cache",))
    )
    monkeypatch.setattr(engine_module, "ipc_handles", lambda bucket: [n for n, _ in bucket])
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    return FakeLLM.events


def test_utilization_is_the_plans_budget_capped_at_what_is_free() -> None:
    assert memory_utilization(20 * GIB, 80 * GIB, 70 * GIB) == (0.25, False)
    share, capped = memory_utilization(75 * GIB, 80 * GIB, 70 * GIB)
    room = (70 * GIB - START_MARGIN_BYTES) / (80 * GIB)
    assert capped and room - 1e-4 < share <= room  # rounded down, never above what is free
    with pytest.raises(
        EngineMemoryError, match=r"no device memory for the vLLM engine: 1\.00 GiB free"
    ):
        memory_utilization(20 * GIB, 80 * GIB, 1 * GIB)
    assert sleep_level(reloads_next=True) == 2 and sleep_level(reloads_next=False) == 1


def test_the_engine_starts_with_the_jobs_dtype_the_plans_memory_and_prefix_caching(
    fake_vllm: list[Any],
) -> None:
    settings = EngineSettings(
        max_model_len=1536, dtype="bfloat16", memory_bytes=24 * GIB, prefix_caching=True
    )
    engine = engine_module.VllmEngine(Path("/models/actor"), settings, "cuda:0")
    (_, kwargs), *_ = [e for e in fake_vllm if e[0] == "LLM"]
    assert kwargs["dtype"] == "bfloat16"
    assert kwargs["gpu_memory_utilization"] == 0.3  # 24 of 80 GiB
    assert kwargs["enable_prefix_caching"] is True
    assert kwargs["enforce_eager"] is False  # CUDA graphs on a GPU
    assert kwargs["enable_sleep_mode"] is True
    assert kwargs["max_num_batched_tokens"] >= 1536
    # torch's cached blocks went back before vLLM measured the free memory.
    assert fake_vllm.index(("empty_cache",)) < fake_vllm.index(("LLM", kwargs))
    assert engine.ipc  # tp = 1 on a GPU: the update sends IPC handles, not bytes
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "0"  # the child sees this worker's GPU


def test_on_cpu_the_engine_runs_eager_and_vllm_sizes_its_own_cache(fake_vllm: list[Any]) -> None:
    engine_module.VllmEngine(Path("/m"), EngineSettings(max_model_len=64, memory_bytes=GIB))
    kwargs = fake_vllm[0][1]
    assert kwargs["enforce_eager"] is True and "gpu_memory_utilization" not in kwargs


def test_cached_blocks_are_released_before_every_wake_up(fake_vllm: list[Any]) -> None:
    engine = engine_module.VllmEngine(
        Path("/m"), EngineSettings(max_model_len=64, memory_bytes=GIB), "cuda:0"
    )
    fake_vllm.clear()
    engine.sleep(reloads_next=True)
    engine.update_weights([[("w", torch.zeros(2))]])
    assert fake_vllm == [
        ("sleep", 2),
        ("empty_cache",),
        ("wake_up", ["weights"]),
        ("rpc", "rlhf_begin_update"),
        ("rpc", "rlhf_load_bucket_ipc"),
        ("rpc", "rlhf_finish_update"),
        ("empty_cache",),
        ("wake_up", ["kv_cache"]),
        ("reset_prefix_cache",),
    ]
    fake_vllm.clear()
    engine.sleep(reloads_next=False)  # the next call runs on these weights: keep them
    from rlhf_worker.engine import GenerationConfig

    out = engine.generate([[1, 2]], GenerationConfig(2), [0], "cpu")
    assert fake_vllm == [("sleep", 1), ("empty_cache",), ("wake_up", None), ("generate", 1)]
    assert out.tokens.tolist() == [[3, 0]]


def _runtime_for(path: str, **spec: Any) -> Any:
    (job,), problems = load_jobs(str(ROOT / path))
    assert not problems
    plan = plan_job(job, strategy="heuristic")
    calls = {c.name: SimpleNamespace(name=c.name, kind=c.kind, role=c.role) for c in plan.calls}
    layouts = {c.name: SimpleNamespace(tp=c.tp) for c in plan.calls}
    return (
        job,
        plan,
        SimpleNamespace(
            spec=job.spec,
            plan=plan,
            calls=calls,
            layouts=layouts,
            prompt_width=int(job.spec.data.max_prompt_length),
            response_width=int(job.spec.rollout.max_new_tokens),
            samples_per_prompt=int(job.spec.samples_per_prompt),
        ),
    )


def test_the_settings_follow_the_job_and_its_plan() -> None:
    job, plan, rt = _runtime_for("examples/qwen7b-grpo-math.yaml")
    settings = runtime_generate.engine_settings(rt, "actor")
    gen = next(c for c in plan.calls if c.kind == "generate")
    assert settings.dtype == job.spec.models.actor.dtype == "bfloat16"
    assert settings.tensor_parallel_size == gen.tp
    assert settings.memory_bytes == engine_memory_bytes(gen) > 0
    assert settings.memory_bytes == sum(gen.memory_breakdown[t] for t in ENGINE_TERMS)
    assert gen.memory_breakdown["engine_weights"] == gen.memory_breakdown["weights"]
    assert settings.prefix_caching  # GRPO: a group of samples per prompt
    assert runtime_generate.reloads_next(rt, gen.name)


def test_remax_keeps_the_weights_between_its_two_generation_calls() -> None:
    calls = {
        "actor_gen": SimpleNamespace(kind="generate", role="actor"),
        "actor_greedy_gen": SimpleNamespace(kind="generate", role="actor"),
        "actor_train": SimpleNamespace(kind="train", role="actor"),
    }
    rt = SimpleNamespace(calls=calls)
    assert not runtime_generate.reloads_next(rt, "actor_gen")
    assert runtime_generate.reloads_next(rt, "actor_greedy_gen")
