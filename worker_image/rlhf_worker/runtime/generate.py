"""Generation calls (``actor_gen``, ReMax's greedy one) on either rollout backend.

``rollout.backend: torch`` samples with the worker's own decoder
(``engine.generate``) on the role's copy under the call's layout, in
micro-batches; ``vllm`` hands the same rows to a vLLM engine (``rollout/``) that
holds the current weights. Both store the same data: ``responses`` (the prompt
left-padded to maxPromptLength, the response right-padded to maxNewTokens) and,
if the call produces them, the responses' log-probabilities.

On vLLM each dp replica of the generation layout (pp=1) keeps one engine for
the whole job, started from the role's model directory, with vLLM's tensor
parallelism equal to the layout's tp (each rank of the replica hosts one
tensor-parallel rank of it). Before every generation call the reallocated
transient copy's parameters are loaded into it in place (the coordinator
reallocates the actor into the generation layout after each training step;
with tp>1 the shards are gathered bucket by bucket over the tp group), so what
vLLM samples from is always the current policy and no checkpoint is read from
disk after start. The log-probabilities the loss uses (``gen_logprobs``) are
recomputed by the training engine's forward pass on the same copy by default
(``rollout.recomputeLogprobs``, default true): vLLM's own kernels differ from
the training forward in the last bits, and PPO's ratio must start at exactly 1.
The gap between the two is reported as ``logprob_mismatch_mean``/``_max``.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from rlhf_operator.contract.plan import engine_memory_bytes
from rlhf_worker.engine import GenerationConfig, forward_logprobs, generate
from rlhf_worker.engine.generate import left_pad
from rlhf_worker.rollout.engine import VllmEngine
from rlhf_worker.rollout.settings import EngineSettings
from rlhf_worker.rollout.weights import check_layout, gathered_buckets
from rlhf_worker.runtime.rows import rank_segments
from rlhf_worker.runtime.state import LocalData, Runtime


def run_generation(rt: Runtime, name: str, iteration: int) -> dict[str, float]:
    """This rank's rows of generation call `name` on the job's rollout backend."""
    greedy = rt.calls[name].greedy
    if rt.spec.rollout.backend == "vllm":
        return _generate_with_vllm(rt, name, iteration, greedy)
    return _generate(rt, name, iteration, greedy)


def sampling(rt: Runtime, greedy: bool) -> GenerationConfig:
    """How the job samples (both backends): the rollout settings and the tokenizer's ids."""
    rollout = rt.spec.rollout
    return GenerationConfig(
        max_new_tokens=rt.response_width,
        greedy=greedy or rollout.temperature == 0,
        temperature=rollout.temperature or 1.0,
        top_p=rollout.top_p,
        eos_token_id=rt.tokenizer.eos_token_id,
        pad_token_id=rt.tokenizer.pad_token_id,
        seed=int(rt.spec.training.seed),
    )


# --- torch ---------------------------------------------------------------------


def _generate(rt: Runtime, name: str, iteration: int, greedy: bool) -> dict[str, float]:
    call, layout = rt.calls[name], rt.layouts[name]
    model = rt.roles[call.role].on(layout)
    config = sampling(rt, greedy)
    segments, row_ids, row_prompts, sample_ids = _rows(rt, name, iteration, greedy)
    parts: list[dict[str, Tensor]] = []
    logprobs: list[Tensor] = []
    micro = max(1, rt.plan.call(name).micro_batches)
    for chunk in _chunks(list(range(len(row_ids))), micro):
        chunk_prompts = [row_prompts[i] for i in chunk]
        # Each sample has its own sampling stream: the same tokens whatever the layout.
        out = generate(model, chunk_prompts, config, sample_ids=[sample_ids[i] for i in chunk])
        parts.append(_sequences(rt, chunk_prompts, out.tokens, out.lengths))
        logprobs.append(out.logprobs)
    batch = {key: torch.cat([part[key] for part in parts]) for key in parts[0]}
    rt.data[(call.outputs[0], name)] = LocalData(segments, batch)
    if len(call.outputs) > 1:
        rt.data[(call.outputs[1], name)] = LocalData(segments, {"value": torch.cat(logprobs)})
    lengths = batch["attention_mask"][:, rt.prompt_width :].sum(dim=1).float()
    return _counted(rt, name, batch, {"response_length_mean": float(lengths.mean())})


def _chunks(items: list[int], parts: int) -> list[list[int]]:
    size = max(1, -(-len(items) // parts))
    return [items[i : i + size] for i in range(0, len(items), size)]


# --- what both backends share ------------------------------------------------------


def _rows(
    rt: Runtime, name: str, iteration: int, greedy: bool
) -> tuple[list[tuple[int, int]], list[int], list[list[int]], list[int]]:
    """This rank's row segments of the call, its rows, their prompts' token ids and their
    sampling streams (a sample's global index over the run)."""
    per_prompt = 1 if greedy else rt.samples_per_prompt
    rows = int(rt.spec.data.batch_size) * per_prompt
    segments = rank_segments(rt.layouts[name], rt.rank, rows)
    prompts = rt.iteration_prompts(iteration)
    row_ids = [r for start, stop in segments for r in range(start, stop)]
    row_prompts = [list(prompts[r // per_prompt].ids) for r in row_ids]
    return segments, row_ids, row_prompts, [iteration * rows + r for r in row_ids]


def _sequences(
    rt: Runtime, prompts: list[list[int]], tokens: Tensor, lengths: Tensor
) -> dict[str, Tensor]:
    """Prompts left-padded to maxPromptLength followed by the generated tokens, and the mask
    of both (the response's up to and including its EOS)."""
    prompt_ids, prompt_mask = left_pad(
        prompts, rt.tokenizer.pad_token_id, rt.prompt_width, device=rt.device
    )
    steps = torch.arange(rt.response_width, device=rt.device).unsqueeze(0)
    response_mask = (steps < lengths.unsqueeze(1)).long()
    return {
        "input_ids": torch.cat([prompt_ids, tokens], dim=1),
        "attention_mask": torch.cat([prompt_mask, response_mask], dim=1),
    }


def _counted(
    rt: Runtime, name: str, batch: dict[str, Tensor], metrics: dict[str, float]
) -> dict[str, float]:
    """The call's metrics, with its tokens and samples on one rank per replica (for totals)."""
    p_index, _, t_index = rt.layouts[name].coords(rt.rank)
    if p_index == 0 and t_index == 0:
        metrics["tokens"] = float(batch["attention_mask"].sum())
        metrics["samples"] = float(batch["attention_mask"].shape[0])
    return metrics


# --- vLLM -------------------------------------------------------------------------

# One engine per process and model directory, for the life of the worker.
_ENGINES: dict[Path, VllmEngine] = {}
# The iteration whose weights each engine holds: ReMax's two generation calls of
# one iteration (sampled, greedy) run before its training step, so the second
# needs no update.
_LOADED: dict[Path, int] = {}


def engine_settings(rt: Runtime, role: str) -> EngineSettings:
    """How the role's engine starts: the job's dtype and widths, the generation layout's tp,
    the plan's memory for it (the largest over the role's generation calls), and prefix
    caching where prompts repeat (several samples per prompt share one)."""
    generation = [c.name for c in rt.calls.values() if c.kind == "generate" and c.role == role]
    return EngineSettings(
        max_model_len=rt.prompt_width + rt.response_width,
        dtype=rt.spec.models.present()[role].dtype,  # the job's, as the training copy's
        seed=int(rt.spec.training.seed),
        tensor_parallel_size=rt.layouts[generation[0]].tp,
        memory_bytes=max(engine_memory_bytes(rt.plan.call(name)) for name in generation),
        prefix_caching=rt.samples_per_prompt > 1,
    )


def engine_for(rt: Runtime, role: str) -> VllmEngine:
    """This process's engine for a role's model (started on first use: collective when tp>1)."""
    directory = rt.model_dirs[role]
    engine = _ENGINES.get(directory)
    if engine is None:
        engine = VllmEngine(directory, engine_settings(rt, role), rt.device)
        _ENGINES[directory] = engine
    return engine


def reloads_next(rt: Runtime, name: str) -> bool:
    """Whether the engine's next use after call `name` loads new weights: no later
    generation call of the role in the iteration (ReMax's greedy one follows its sampled
    one on the same weights), so the next use follows a training step."""
    role, order = rt.calls[name].role, list(rt.calls)
    later = order[order.index(name) + 1 :]
    return not any(rt.calls[c].kind == "generate" and rt.calls[c].role == role for c in later)


def shutdown_engines() -> None:
    for engine in _ENGINES.values():
        engine.close()
    _ENGINES.clear()
    _LOADED.clear()


def _generate_with_vllm(rt: Runtime, name: str, iteration: int, greedy: bool) -> dict[str, float]:
    call, layout = rt.calls[name], rt.layouts[name]
    check_layout(layout, rt.world_size)
    model = rt.roles[call.role].on(layout)
    engine = engine_for(rt, call.role)
    directory = rt.model_dirs[call.role]
    metrics: dict[str, float] = {}
    if engine.utilization is not None:
        metrics["vllm_memory_utilization"] = engine.utilization
        metrics["vllm_memory_capped"] = float(engine.utilization_capped)
    # Level-2 sleep dropped the weights: load them whatever the iteration (a call order
    # the sleep level did not foresee costs an update, never stale weights).
    if _LOADED.get(directory) != iteration or engine.asleep == 2:
        shards = gathered_buckets(model.local_state(), model.config.shape, model.ctx)
        update = engine.update_weights(shards)
        _LOADED[directory] = iteration
        metrics["weight_update_seconds"] = update.seconds
        metrics["weight_update_gb_per_s"] = update.gb_per_s

    p, t = rt.prompt_width, rt.response_width
    segments, _, row_prompts, sample_ids = _rows(rt, name, iteration, greedy)
    row_prompts = [ids[-p:] for ids in row_prompts]
    # All of this rank's rows in one call: vLLM batches them itself.
    out = engine.generate(row_prompts, sampling(rt, greedy), sample_ids, rt.device)
    batch = _sequences(rt, row_prompts, out.tokens, out.lengths)
    rt.data[(call.outputs[0], name)] = LocalData(segments, batch)

    metrics = {"response_length_mean": float(out.lengths.float().mean()), **metrics}
    if len(call.outputs) > 1:
        logprobs = out.logprobs
        if rt.spec.rollout.recompute_logprobs:
            response_mask = batch["attention_mask"][:, p:]
            micro = max(1, rt.plan.call(name).micro_batches)
            recomputed = forward_logprobs(model, batch, micro)[:, p - 1 : p + t - 1]
            recomputed = recomputed.float() * response_mask
            metrics.update(mismatch(out.logprobs, recomputed, response_mask))
            logprobs = recomputed
        rt.data[(call.outputs[1], name)] = LocalData(segments, {"value": logprobs.contiguous()})
    # Training may use this device next (a no-op where vLLM cannot sleep).
    engine.sleep(reloads_next(rt, name))
    return _counted(rt, name, batch, metrics)


def mismatch(engine_logprobs: Tensor, recomputed: Tensor, mask: Tensor) -> dict[str, float]:
    """Mean and max |vLLM - training engine| log-probability over response tokens."""
    gap = (engine_logprobs - recomputed).abs() * mask
    count = float(mask.sum().clamp(min=1))
    return {
        "logprob_mismatch_mean": float(gap.sum()) / count,
        "logprob_mismatch_max": float(gap.max()) if gap.numel() else 0.0,
    }
