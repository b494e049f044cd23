"""One vLLM engine in this process: generation from token ids, weights updated in place.

The engine starts from a model directory (config.json and the tokenizer; the
weights it loads there are replaced by the first update). With tensor
parallelism 1 its model worker is a child process
(``distributed_executor_backend="mp"``) that initialises its own
torch.distributed world of one rank, so it never touches the job's gloo world.
With tensor parallelism t > 1 every worker of the job hosts one tensor-parallel
rank of an engine in-process (vLLM's "external launcher", torchrun-style): vLLM
reuses the job's torch.distributed world and cuts it into engines of t
consecutive ranks, each engine fed the same prompts by all of its ranks.
Weights reach the engine through ``collective_rpc`` in buckets either way.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from rlhf_worker.engine import GenerationConfig, GenerationOutput
from rlhf_worker.rollout.extension import QUALNAME
from rlhf_worker.rollout.weights import total_bytes

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
class UpdateStats:
    seconds: float
    bytes: int
    buckets: int

    @property
    def gb_per_s(self) -> float:
        return self.bytes / max(self.seconds, 1e-9) / 1e9


# In-process (tp>1) engines live until the worker process exits: vLLM shuts an
# engine core down when it is garbage-collected, and that shutdown destroys
# torch.distributed's default group, which is the job's world.
_IN_PROCESS: list[Any] = []


def _external_launcher_env() -> None:
    """What vLLM's external launcher reads: this process's place in the job's world."""
    import torch.distributed as dist

    if not dist.is_initialized():
        raise RuntimeError("a tensor-parallel vLLM engine needs the job's torch.distributed world")
    rank = dist.get_rank()
    os.environ["RANK"] = str(rank)
    os.environ["WORLD_SIZE"] = str(dist.get_world_size())
    # vLLM picks its device by local rank: a worker pod owns one GPU, device 0; on
    # CPU vLLM only uses it to tell the ranks of one machine apart.
    os.environ["LOCAL_RANK"] = str(
        torch.cuda.current_device() if torch.cuda.is_available() else rank
    )


class VllmEngine:
    """A ``vllm.LLM`` over one model directory, with sequences of at most `max_model_len`."""

    def __init__(
        self,
        model_dir: Path,
        max_model_len: int,
        seed: int = 0,
        dtype: str = "float32",
        sleep_between_calls: bool = True,
        tensor_parallel_size: int = 1,
    ):
        for key, value in ENV_DEFAULTS.items():
            os.environ.setdefault(key, value)
        if tensor_parallel_size > 1:
            _external_launcher_env()
        from vllm import LLM
        from vllm.platforms import current_platform

        self.model_dir = Path(model_dir)
        self.max_model_len = max_model_len
        # Sleep mode frees the engine's device memory while training runs on the
        # same devices. vLLM offers it on CUDA/ROCm/XPU only: on CPU,
        # enable_sleep_mode raises "Sleep mode is not supported on current platform".
        self.sleep_mode = sleep_between_calls and current_platform.is_sleep_mode_available()
        self.asleep = False
        # tp=1: a child process for the model worker, which initialises its own
        # torch.distributed world of one rank, never the job's gloo world. tp>1:
        # the model worker runs here, on the job's world (see the module docstring).
        self.in_process = tensor_parallel_size > 1
        backend = "external_launcher" if self.in_process else "mp"
        # An in-process engine seeds the global RNGs: keep the worker's own streams.
        with torch.random.fork_rng(devices=[]):
            self.llm: Any = LLM(
                model=str(self.model_dir),
                dtype=dtype,
                enforce_eager=True,  # no graph capture: CPU, and weights change under it
                max_model_len=max_model_len,
                seed=seed,
                worker_extension_cls=QUALNAME,
                tensor_parallel_size=tensor_parallel_size,
                distributed_executor_backend=backend,
                enable_prefix_caching=False,  # cached KV would outlive a weight update
                enable_sleep_mode=self.sleep_mode,
            )
        if self.in_process:
            _IN_PROCESS.append(self.llm)

    def generate(
        self,
        prompts: Sequence[Sequence[int]],
        spec: GenerationConfig,
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

    def update_weights(self, weight_buckets: Iterable[list[tuple[str, Tensor]]]) -> UpdateStats:
        """Load new weights (buckets of Hugging Face name, full tensor) into the running engine.

        One ``collective_rpc`` per bucket; a bucket is produced only when the engine
        is ready for it, so a lazily gathered bucket is the update's only extra memory.
        """
        start = time.perf_counter()
        count = nbytes = 0
        if self.asleep:  # weights' memory back first; the KV cache after the update
            self.llm.wake_up(tags=["weights"])
        self.llm.collective_rpc("rlhf_begin_update")
        for bucket in weight_buckets:
            self.llm.collective_rpc("rlhf_load_bucket", args=(bucket,))
            count += 1
            nbytes += total_bytes(bucket)
        self.llm.collective_rpc("rlhf_finish_update")
        if self.asleep:
            self.llm.wake_up(tags=["kv_cache"])
            self.asleep = False
        self._reset_prefix_cache()
        return UpdateStats(time.perf_counter() - start, nbytes, count)

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
        """Stop the engine core process (tp=1); an in-process engine (tp>1) stays until exit."""
        engine = getattr(self.llm, "llm_engine", None)
        shutdown = getattr(engine, "engine_core", None)
        if not self.in_process and shutdown is not None and hasattr(shutdown, "shutdown"):
            shutdown.shutdown()
        self.llm = None
