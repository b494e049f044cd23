"""Running one call of an iteration on this rank: generate, score, infer, train.

Data conventions (see ``datamove.key_tensors``): a sequence is the prompt
left-padded to maxPromptLength P followed by the response right-padded to
maxNewTokens T, so every tensor has a fixed width. ``responses`` holds
``input_ids`` and ``attention_mask`` [rows, P+T] (the mask covers the prompt
tokens and the response up to and including EOS); per-token results
(log-probabilities, values) are [rows, T] over response tokens; per-sample
scores are [rows].
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from rlhf_operator.api.algorithm import LossAggregation
from rlhf_operator.api.dataflow import SEQUENCE_KEYS
from rlhf_worker import algorithms
from rlhf_worker.algorithms.core import micro_batch_weight
from rlhf_worker.engine import forward_logprobs, forward_values
from rlhf_worker.rewards.functions import load_reward_function, score
from rlhf_worker.runtime.generate import run_generation
from rlhf_worker.runtime.rows import replica_segments
from rlhf_worker.runtime.state import LocalData, Runtime


def run_call(rt: Runtime, name: str, iteration: int) -> dict[str, float]:
    """Run this rank's part of call `name`; returns metrics (the same on every rank of a replica)."""
    call = rt.calls[name]
    if rt.rank not in rt.layouts[name].ranks:
        return {}
    if call.kind == "generate":
        return run_generation(rt, name, iteration)
    if call.kind == "inference":
        return _infer(rt, name, iteration)
    return _train(rt, name, iteration)


# --- inference: reference log-probabilities, values, reward/cost scores ------------


def _infer(rt: Runtime, name: str, iteration: int) -> dict[str, float]:
    call, layout = rt.calls[name], rt.layouts[name]
    source = rt.input(call.inputs[0], name)
    batch = {
        "input_ids": source.tensors["input_ids"],
        "attention_mask": source.tensors["attention_mask"],
    }
    p, t = rt.prompt_width, rt.response_width
    micro = max(1, rt.plan.call(name).micro_batches)
    key = call.outputs[0]
    spec = rt.spec.models.present()[call.role]
    if getattr(spec, "reward_function", None):
        value = _score_with_function(rt, iteration, call.inputs[0], source, spec.reward_function)
    elif call.role in ("actor", "ref"):
        value = forward_logprobs(rt.roles[call.role].on(layout), batch, micro)[:, p - 1 : p + t - 1]
    elif call.role == "critic":
        values = forward_values(rt.roles[call.role].on(layout), batch, micro)
        value = values[:, p - 1 : p + t - 1]
    else:  # a reward or cost model: its value at the sequence's last token
        values = forward_values(rt.roles[call.role].on(layout), batch, micro)
        last = _last_index(batch["attention_mask"])
        value = values.gather(1, last.unsqueeze(1)).squeeze(1)
    rt.data[(key, name)] = LocalData(source.segments, {"value": value.float().contiguous()})
    if key in SEQUENCE_KEYS:
        return {f"{key}_mean": float(value.float().mean())}
    return {}


def _last_index(mask: Tensor) -> Tensor:
    positions = torch.arange(mask.shape[1], device=mask.device).unsqueeze(0).expand_as(mask)
    return torch.where(mask.bool(), positions, torch.zeros_like(positions)).max(dim=1).values


def _score_with_function(
    rt: Runtime, iteration: int, input_key: str, source: LocalData, spec: str
) -> Tensor:
    fn = load_reward_function(spec, search_path=[rt.base_dir])
    greedy = input_key.startswith("greedy_")
    per_prompt = 1 if greedy else rt.samples_per_prompt
    iteration_prompts = rt.iteration_prompts(iteration)
    prompts, responses = [], []
    # The responses to the host once (the tokenizer and the reward function run there).
    ids = source.tensors["input_ids"][:, rt.prompt_width :].tolist()
    masks = source.tensors["attention_mask"][:, rt.prompt_width :].tolist()
    offset = 0
    for start, stop in source.segments:
        for r in range(start, stop):
            row = offset + r - start
            prompts.append(iteration_prompts[r // per_prompt].text)
            tokens = [t for t, keep in zip(ids[row], masks[row], strict=True) if keep]
            responses.append(rt.tokenizer.decode(tokens, skip_special_tokens=True))
        offset += stop - start
    scores = score(fn, prompts, responses, name=spec)
    return torch.tensor(scores, dtype=torch.float32, device=rt.device)


# --- training ------------------------------------------------------------------------


def _train(rt: Runtime, name: str, iteration: int) -> dict[str, float]:
    call, layout = rt.calls[name], rt.layouts[name]
    role = rt.roles[call.role]
    trainer = role.trainer
    if trainer is None:
        raise RuntimeError(f"{name}: role {call.role} has no trainable copy on rank {rt.rank}")
    algo = algorithms.for_name(rt.spec.algorithm.name)
    params = rt.spec.algorithm.params()
    state = rt.algorithm_states.setdefault(name, algo.new_state(params))
    p = rt.prompt_width
    full = _full_batch(rt, name, call.inputs)
    mask = full["attention_mask"][:, p:].float()
    adv = algo.actor_advantages({**full, "mask": mask}, params, state, rt.samples_per_prompt)
    metrics = {k: float(v) for k, v in adv.metrics.items()}
    _, d, _ = layout.coords(rt.rank)
    minibatches = int(rt.spec.training.minibatches)
    planned = rt.plan.call(name)
    micro, recompute = max(1, planned.micro_batches), planned.recompute
    shard_grads = planned.zero_stage == 2
    per_row = {k: v for k, v in full.items() if v.dim() >= 1 and v.shape[0] == rt.rows}
    per_row["mask"] = mask
    per_row["advantages"] = adv.advantages
    if adv.returns is not None:
        per_row["returns"] = adv.returns
    losses, norms = [], []
    for _ in range(int(rt.spec.training.ppo_epochs)):
        for m in range(minibatches):
            start, stop = replica_segments(rt.rows, layout.dp, d, minibatches)[m]
            chunk = rt.rows // minibatches
            tokens = float(mask[m * chunk : (m + 1) * chunk].sum().clamp(min=1.0))
            batch = {k: v[start:stop] for k, v in per_row.items()}
            loss_fn = _loss_fn(rt, call.role, algo, params, tokens, chunk)
            stats = trainer.step(batch, loss_fn, micro, recompute, shard_grads)
            losses.append(stats.loss)
            norms.append(stats.grad_norm)
    metrics["loss"] = sum(losses) / len(losses)
    metrics["grad_norm"] = sum(norms) / len(norms)
    metrics["recompute"] = float(recompute)  # the plan's choices, as they ran
    metrics["zero_stage"] = float(planned.zero_stage)
    return metrics


def _full_batch(rt: Runtime, call: str, inputs: tuple[str, ...]) -> dict[str, Tensor]:
    """Every input of a train call, all rows (train calls receive their inputs replicated)."""
    out: dict[str, Tensor] = {}
    for key in inputs:
        held = rt.data.get((key, call))
        if held is None:
            raise RuntimeError(f"{call}: input {key!r} was not moved to this rank")
        if key in ("responses",):
            out.update(held.tensors)
        else:
            out[key] = held.tensors["value"]
    return out


def _loss_fn(
    rt: Runtime, role: str, algo: Any, params: Any, minibatch_tokens: float, minibatch_rows: int
) -> Any:
    """The micro-batch loss, scaled so summing over micro-batches and replicas gives the
    minibatch's aggregate (the actor's loss aggregation; critics average over tokens)."""
    p, t = rt.prompt_width, rt.response_width
    how: LossAggregation = "token-mean"  # critics average over tokens
    if role == "actor":
        how = getattr(params, "loss_aggregation", "token-mean")

    def loss(out: Tensor, mb: dict[str, Tensor]) -> Tensor:
        share = micro_batch_weight(mb["mask"], minibatch_tokens, minibatch_rows, how)
        new = out[:, p - 1 : p + t - 1]  # response tokens' log-probabilities or values
        if role == "actor":
            result = algo.actor_loss(new, mb, mb["advantages"], params)
        else:
            result = algo.critic_loss(new, mb, mb["returns"], params)
        return result.loss * share

    return loss
