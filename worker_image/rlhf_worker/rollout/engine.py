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
from rlhf_worker.rollout.settings import (
    EngineSettings,
    llm_arguments,
    memory_utilization,
    sleep_level,
)
from rlhf_worker.rollout.weights import total_bytes
from rlhf_worker.runtime.memory import hand_back_cached

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


def ipc_handles(bucket: list[tuple[str, Tensor]]) -> list[tuple[str, Any]]:
    """A bucket of CUDA tensors as (name, (rebuild function, arguments)) pairs: pickled,
    they carry a CUDA IPC handle to the tensor's memory instead of its bytes."""
    from torch.multiprocessing.reductions import reduce_tensor

    for name, tensor in bucket:
        if not tensor.is_cuda:
            raise ValueError(f"{name}: a CUDA IPC handle needs a CUDA tensor, not {tensor.device}")
    return [(name, reduce_tensor(tensor.detach())) for name, tensor in bucket]


# The pod's GPUs as this process saw them at start (before an engine narrows them).
_VISIBLE_AT_START = os.environ.get("CUDA_VISIBLE_DEVICES", "")


def _child_sees_this_gpu(device: torch.device) -> None:
    """vLLM's tp = 1 model worker (a child process) takes its device 0: let the child see
    this worker's GPU alone, whichever of the pod's GPUs that is."""
    index = device.index if device.index is not None else torch.cuda.current_device()
    physical = _VISIBLE_AT_START.split(",")[index] if _VISIBLE_AT_START else str(index)
    os.environ["CUDA_VISIBLE_DEVICES"] = physical  # read by the child only: CUDA is up here


def unlink_cpu_shared_memory() -> list[str]:
    """Unlink the names of this rank's vLLM CPU shared-memory segments once they are mapped.

    On CPU, vLLM's tensor-parallel groups communicate through POSIX shared memory
    named after the group alone ("-tp:0-[0-1]-cpushm_<rank>": the same name for
    every job on a machine) and created exclusively; a worker that exits without
    running vLLM's destructor leaves the segments behind, and the next engine on
    the machine fails with "create shm in SHMManager failed. errno: 17". By the
    time ``LLM()`` returns every rank of the group has mapped every segment (vLLM
    joins them behind a barrier), so the names are no longer needed: unlinking
    them now keeps the mappings and leaves nothing behind, however the process
    ends. Returns the names unlinked (none on GPU, where NCCL is used instead).
    """
    from vllm.distributed import parallel_state

    unlinked = []
    for ref in list(parallel_state._groups.values()):
        group = ref()
        communicator = getattr(group, "device_communicator", None)
        shm = getattr(communicator, "dist_module", None)
        name = getattr(shm, "group_name", None)
        if group is None or not isinstance(name, str):
            continue
        # shm_open drops leading slashes; the segment of a rank carries its group rank.
        path = Path("/dev/shm") / f"{name.lstrip('/')}_{group.rank_in_group}"
        if path.exists():
            path.unlink()
            unlinked.append(path.name)
    return unlinked


def generation_output(
    outputs: Sequence[Any], spec: GenerationConfig, device: torch.device | str
) -> GenerationOutput:
    """vLLM's ``RequestOutput``s as the torch generator's tensors, each copied to `device` once."""
    steps = spec.max_new_tokens
    tokens, logprobs, lengths = [], [], []
    for out in outputs:
        completion = out.outputs[0]
        ids = list(completion.token_ids)[:steps]
        entries = (completion.logprobs or [])[: len(ids)]
        row = [float(entry[ids[step]].logprob) for step, entry in enumerate(entries)]
        tokens.append(ids + [spec.pad_token_id] * (steps - len(ids)))
        logprobs.append(row + [0.0] * (steps - len(row)))
        lengths.append(len(ids))
    rows = len(outputs)
    return GenerationOutput(
        tokens=torch.tensor(tokens, dtype=torch.long, device=device).reshape(rows, steps),
        logprobs=torch.tensor(logprobs, dtype=torch.float32, device=device).reshape(rows, steps),
        lengths=torch.tensor(lengths, dtype=torch.long, device=device),
    )


class VllmEngine:
    """A ``vllm.LLM`` over one model directory, started with `settings` (`rollout.settings`),
    whose outputs land on `device` (the runtime's)."""

    def __init__(
        self,
        model_dir: Path,
        settings: EngineSettings,
        device: torch.device | str = "cpu",
    ):
        for key, value in ENV_DEFAULTS.items():
            os.environ.setdefault(key, value)
        self.settings = settings
        self.device = torch.device(device)
        self.in_process = settings.tensor_parallel_size > 1
        if self.in_process:
            _external_launcher_env()
        from vllm import LLM
        from vllm.platforms import current_platform

        self.model_dir = Path(model_dir)
        self.max_model_len = settings.max_model_len
        # Sleep mode frees the engine's device memory while training runs on the
        # same devices. vLLM offers it on CUDA/ROCm/XPU only: on CPU,
        # enable_sleep_mode raises "Sleep mode is not supported on current platform".
        self.sleep_mode = (
            settings.sleep_between_calls and current_platform.is_sleep_mode_available()
        )
        self.asleep = 0  # the sleep level the engine is at; 0 awake
        on_cuda = self.device.type == "cuda"
        self.utilization, self.utilization_capped = None, False
        if on_cuda and settings.memory_bytes:
            hand_back_cached(self.device)  # vLLM measures free memory: torch's cache is free
            free, total = torch.cuda.mem_get_info(self.device)
            self.utilization, self.utilization_capped = memory_utilization(
                settings.memory_bytes, total, free
            )
        if on_cuda and not self.in_process:
            _child_sees_this_gpu(self.device)
        arguments = llm_arguments(
            settings, str(self.model_dir), on_cuda, self.sleep_mode, self.utilization, QUALNAME
        )
        # An in-process engine seeds the global RNGs (and, on CUDA, this device's):
        # keep the worker's own streams.
        cuda_rng = on_cuda and torch.cuda.is_available()
        with torch.random.fork_rng(devices=[self.device] if cuda_rng else []):
            self.llm: Any = LLM(**arguments)
        if self.in_process:
            _IN_PROCESS.append(self.llm)
            unlink_cpu_shared_memory()
        # tp = 1 on a GPU: the bucket's tensors travel as CUDA IPC handles to the child
        # process, which maps the same device memory: no copy through the host.
        self.ipc = on_cuda and not self.in_process

    def generate(
        self,
        prompts: Sequence[Sequence[int]],
        spec: GenerationConfig,
        sample_ids: Sequence[int],
        device: torch.device | str,
    ) -> GenerationOutput:
        """Responses right-padded to ``max_new_tokens``, their log-probabilities, lengths,
        on `device` (the runtime's: what reads them next is the training engine).

        Same shapes as the torch generator's output; a response includes its EOS.
        Log-probabilities are vLLM's of the sampled token under the raw model
        distribution (vLLM's default ``raw_logprobs``).
        """
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        if self.asleep == 2:
            raise RuntimeError(
                "the engine slept at level 2 (weights dropped): update its weights first"
            )
        if self.asleep:  # level 1: the same weights, back from host memory
            self._wake()

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
        return generation_output(outputs, spec, device)

    def update_weights(self, weight_buckets: Iterable[list[tuple[str, Tensor]]]) -> UpdateStats:
        """Load new weights (buckets of Hugging Face name, full tensor) into the running engine.

        One ``collective_rpc`` per bucket; a bucket is produced only when the engine
        is ready for it, so a lazily gathered bucket is the update's only extra memory.
        """
        start = time.perf_counter()
        count = nbytes = 0
        if self.asleep:  # weights' memory back first; the KV cache after the update
            self._wake(["weights"])
        self.llm.collective_rpc("rlhf_begin_update")
        for bucket in weight_buckets:
            if self.ipc:
                self.llm.collective_rpc("rlhf_load_bucket_ipc", args=(ipc_handles(bucket),))
            else:
                self.llm.collective_rpc("rlhf_load_bucket", args=(bucket,))
            count += 1
            nbytes += total_bytes(bucket)
        self.llm.collective_rpc("rlhf_finish_update")
        if self.asleep:
            self._wake(["kv_cache"])
        self._reset_prefix_cache()  # cached prompts' KV was computed with the old weights
        return UpdateStats(time.perf_counter() - start, nbytes, count)

    def sleep(self, reloads_next: bool = True) -> None:
        """Release the engine's device memory until its next use (where vLLM can sleep).

        `reloads_next`: the next use loads new weights anyway, so they are dropped
        (level 2); otherwise they wait in host memory (level 1).
        """
        if self.sleep_mode and not self.asleep:
            level = sleep_level(reloads_next)
            self.llm.sleep(level=level)
            self.asleep = level

    def _wake(self, tags: list[str] | None = None) -> None:
        """Wake (some of) the engine; torch's cached blocks go back to the device first,
        or vLLM could not map its memory beside what training left cached."""
        hand_back_cached(self.device)
        self.llm.wake_up(tags=tags)
        if tags is None or "kv_cache" in tags:
            self.asleep = 0

    def weight_checksum(self) -> float:
        return float(self.llm.collective_rpc("rlhf_weight_checksum")[0])

    def _reset_prefix_cache(self) -> None:
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
