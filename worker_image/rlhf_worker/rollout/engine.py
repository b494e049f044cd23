"""One vLLM engine in this process: generation from token ids, weights updated in place.

The engine starts from a model directory (config.json and the tokenizer; the
weights it loads there are replaced by the first update) and runs vLLM's
model worker in a child process (``distributed_executor_backend="mp"``). That
child initialises its own torch.distributed world of one rank, so it never
touches the job's gloo world this process belongs to; weights reach it through
``collective_rpc`` in buckets.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from rlhf_worker.engine import GenerationOutput
from rlhf_worker.rollout.extension import QUALNAME
from rlhf_worker.rollout.weights import DEFAULT_BUCKET_BYTES, buckets, total_bytes

# vLLM reads these when it is imported; the job's values win if set.
ENV_DEFAULTS = {
    "VLLM_HOST_IP": "127.0.0.1",
    "VLLM_CPU_KVCACHE_SPACE": "1",  # GiB of KV cache per engine on CPU
    "VLLM_CONFIGURE_LOGGING": "0",
    # The engine core runs in this process; its model worker is a child process
    # (distributed_executor_backend="mp"). collective_rpc arguments then reach the
    # worker pickled, tensors included; through the engine-core client's msgpack
    # path a tensor inside the arguments arrives as a bare [dtype, shape, index] list.
    "VLLM_ENABLE_V1_MULTIPROCESSING": "0",
}


def vllm_available() -> bool:
    try:
        import vllm  # noqa: F401
    except Exception:  # an import that fails for any reason means: no vLLM here
        return False
    return True


@dataclass(frozen=True)
class SamplingSpec:
    max_new_tokens: int
    greedy: bool
    temperature: float
    top_p: float
    eos_token_id: int | None
    pad_token_id: int
    seed: int


@dataclass(frozen=True)
class UpdateStats:
    seconds: float
    bytes: int
    buckets: int

    @property
    def gb_per_s(self) -> float:
        return self.bytes / max(self.seconds, 1e-9) / 1e9


class VllmEngine:
    """A ``vllm.LLM`` over one model directory, with sequences of at most `max_model_len`."""

    def __init__(
        self,
        model_dir: Path,
        max_model_len: int,
        seed: int = 0,
        dtype: str = "float32",
        sleep_between_calls: bool = True,
    ):
        for key, value in ENV_DEFAULTS.items():
            os.environ.setdefault(key, value)
        from vllm import LLM
        from vllm.platforms import current_platform

        self.model_dir = Path(model_dir)
        self.max_model_len = max_model_len
        # Sleep mode frees the engine's device memory while training runs on the
        # same devices. vLLM offers it on CUDA/ROCm/XPU only: on CPU,
        # enable_sleep_mode raises "Sleep mode is not supported on current platform".
        self.sleep_mode = sleep_between_calls and current_platform.is_sleep_mode_available()
        self.asleep = False
        self.llm: Any = LLM(
            model=str(self.model_dir),
            dtype=dtype,
            enforce_eager=True,  # no graph capture: CPU, and weights change under it
            max_model_len=max_model_len,
            seed=seed,
            worker_extension_cls=QUALNAME,
            # A child process for the model worker: it initialises its own
            # torch.distributed world of one rank, never the job's gloo world.
            distributed_executor_backend="mp",
            enable_prefix_caching=False,  # cached KV would outlive a weight update
            enable_sleep_mode=self.sleep_mode,
        )

    def generate(
        self,
        prompts: Sequence[Sequence[int]],
        spec: SamplingSpec,
        sample_ids: Sequence[int],
    ) -> GenerationOutput:
        """Responses right-padded to ``max_new_tokens``, their log-probabilities, lengths.

        Same shapes as the torch generator's output; a response includes its EOS.
        Log-probabilities are vLLM's of the sampled token under the raw model
        distribution (vLLM's default ``raw_logprobs``).
        """
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        params = [
            SamplingParams(
                max_tokens=spec.max_new_tokens,
                temperature=0.0 if spec.greedy else spec.temperature,
                top_p=1.0 if spec.greedy else spec.top_p,
                # One stream per sample: the same tokens whatever the layout.
                seed=None if spec.greedy else (spec.seed * 1_000_003 + i) % (2**31),
                stop_token_ids=[spec.eos_token_id] if spec.eos_token_id is not None else None,
                # Stop only at the job's EOS, not at ids vLLM reads from generation_config.
                ignore_eos=True,
                logprobs=0,  # the sampled token's log-probability only
                detokenize=False,
            )
            for i in sample_ids
        ]
        inputs = [TokensPrompt(prompt_token_ids=list(p)) for p in prompts]
        outputs = self.llm.generate(inputs, params, use_tqdm=False)
        steps = spec.max_new_tokens
        tokens = torch.full((len(prompts), steps), spec.pad_token_id, dtype=torch.long)
        logprobs = torch.zeros((len(prompts), steps))
        lengths = torch.zeros(len(prompts), dtype=torch.long)
        for row, out in enumerate(outputs):
            completion = out.outputs[0]
            ids = list(completion.token_ids)[:steps]
            tokens[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
            lengths[row] = len(ids)
            for step, entry in enumerate((completion.logprobs or [])[: len(ids)]):
                logprobs[row, step] = float(entry[ids[step]].logprob)
        return GenerationOutput(tokens=tokens, logprobs=logprobs, lengths=lengths)

    def update_weights(
        self, named: list[tuple[str, Tensor]], bucket_bytes: int = DEFAULT_BUCKET_BYTES
    ) -> UpdateStats:
        """Load new weights into the running engine, one bucket per ``collective_rpc``."""
        start = time.perf_counter()
        count = 0
        if self.asleep:  # weights' memory back first; the KV cache after the update
            self.llm.wake_up(tags=["weights"])
        self.llm.collective_rpc("rlhf_begin_update")
        for bucket in buckets(named, bucket_bytes):
            self.llm.collective_rpc("rlhf_load_bucket", args=(bucket,))
            count += 1
        self.llm.collective_rpc("rlhf_finish_update")
        if self.asleep:
            self.llm.wake_up(tags=["kv_cache"])
            self.asleep = False
        self._reset_prefix_cache()
        return UpdateStats(time.perf_counter() - start, total_bytes(named), count)

    def sleep(self) -> None:
        """Release the engine's device memory until the next update (where vLLM can).

        Level 2 drops the weights too: the next ``update_weights`` loads all of them.
        """
        if self.sleep_mode and not self.asleep:
            self.llm.sleep(level=2)
            self.asleep = True

    def weight_checksum(self) -> float:
        return float(self.llm.collective_rpc("rlhf_weight_checksum")[0])

    def _reset_prefix_cache(self) -> None:
        # Prefix caching is off; reset anyway so a future change cannot reuse stale KV.
        reset = getattr(self.llm, "reset_prefix_cache", None)
        if reset is not None:
            reset()

    def close(self) -> None:
        """Stop the engine core process."""
        engine = getattr(self.llm, "llm_engine", None)
        shutdown = getattr(engine, "engine_core", None)
        if shutdown is not None and hasattr(shutdown, "shutdown"):
            shutdown.shutdown()
        self.llm = None
