"""How a vLLM engine is started and put to sleep: pure functions of the job, the plan
and the device (no vLLM import), so that tests check them without an engine.

On a GPU the engine shares its device with the training copies, as verl runs it:

- ``gpu_memory_utilization`` is the plan's budget for the engine (its weights, KV
  cache, activations and overhead: `contract.plan.engine_memory_bytes`) over the
  device's memory: vLLM's utilization is the share of the whole device this
  instance may take, and it sizes its KV cache pool to what is left of it after
  its weights and its measured activations;
- vLLM refuses to start if that share exceeds the memory free at start-up. The
  worker hands torch's cached blocks back first, and the share is capped at what
  is then free less a margin, so the check cannot fail beside the training
  weights; a cap is reported (a plan that overcommits shows up in the metrics,
  not as a crash);
- CUDA graphs stay on (no ``enforce_eager``): a weight update copies into the
  captured tensors' storage, and sleep mode keeps their addresses;
- prefix caching is on where prompts repeat (several samples per prompt: GRPO,
  RLOO groups); it is reset after every weight update;
- sleep level 2 (weights dropped, not saved) where the next use loads new weights
  anyway, level 1 (weights kept in host memory) where the next generation call
  runs on the same weights (ReMax's greedy call after its sampled one).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from rlhf_operator.contract.plan import vllm_batched_tokens

# Free device memory left unclaimed when vLLM's share is capped at start-up. The share
# is measured here, before vLLM's model-worker process exists; vLLM checks it in that
# process after its CUDA context and distributed setup (0.4-0.7 GB), and torch's
# allocator and NCCL take some more before the first training step.
START_MARGIN_BYTES = 3 * 2**29  # 1.5 GiB


class EngineMemoryError(RuntimeError):
    """No room on the device for the engine (the message says how much there is)."""


@dataclass(frozen=True)
class EngineSettings:
    """What one engine is started with (see the module docstring for the why)."""

    max_model_len: int
    dtype: str = "float32"
    seed: int = 0
    tensor_parallel_size: int = 1
    memory_bytes: int = 0  # the plan's budget on one device; 0: vLLM's default
    prefix_caching: bool = False
    sleep_between_calls: bool = True


def memory_utilization(budget: int, total: int, free: int) -> tuple[float, bool]:
    """vLLM's ``gpu_memory_utilization`` for a budget on a device with `total` bytes, `free`
    of them free now; and whether it had to be capped below the budget to fit."""
    room = max(free - START_MARGIN_BYTES, 0)
    capped = budget > room
    share = min(budget, room) / total
    # Rounded down: a share rounded up could claim a few MB more than is free.
    share = math.floor(min(share, 0.98) * 10_000) / 10_000
    if share <= 0:
        raise EngineMemoryError(
            f"no device memory for the vLLM engine: {free / 2**30:.2f} GiB free of "
            f"{total / 2**30:.1f} GiB, {START_MARGIN_BYTES / 2**30:.1f} GiB kept free at start-up"
            " (the plan gives it more than the training roles leave)"
        )
    return share, capped


def llm_arguments(
    settings: EngineSettings,
    model: str,
    on_cuda: bool,
    sleep_mode: bool,
    utilization: float | None,
    worker_extension: str,
) -> dict[str, Any]:
    """Keyword arguments of ``vllm.LLM``."""
    args: dict[str, Any] = {
        "model": model,
        "dtype": settings.dtype,
        # CPU: no graphs to capture. CUDA: graphs, which updates in place keep valid.
        "enforce_eager": not on_cuda,
        "max_model_len": settings.max_model_len,
        "seed": settings.seed,
        "worker_extension_cls": worker_extension,
        "tensor_parallel_size": settings.tensor_parallel_size,
        # tp > 1: every worker hosts one rank of an engine on the job's world; tp = 1:
        # a child process for the model worker (see engine.py).
        "distributed_executor_backend": (
            "external_launcher" if settings.tensor_parallel_size > 1 else "mp"
        ),
        "enable_prefix_caching": settings.prefix_caching,
        "max_num_batched_tokens": vllm_batched_tokens(settings.max_model_len),
        "enable_sleep_mode": sleep_mode,
    }
    if utilization is not None:
        args["gpu_memory_utilization"] = utilization
    return args


def sleep_level(reloads_next: bool) -> int:
    """2 drops the weights (the next update loads all of them), 1 keeps them in host memory."""
    return 2 if reloads_next else 1
