"""Batched generation with a KV cache, under tp, pp and dp.

Prompts of different lengths are left-padded; RoPE positions start at each
prompt's first token, so a sequence's result does not depend on its batch
neighbours. Each step runs the stages in turn (the last stage samples and
broadcasts the tokens over the pipeline; no micro-batch interleaving, so with
pp > 1 only one stage computes at a time). The last stage gathers only the
last position's vocabulary slices over tp to sample.

Sampling is deterministic: sequence ``i`` draws its uniforms from its own
generator seeded by (seed, sample id), and picks a token by inverse CDF over
the probabilities sorted in a stable order. The result therefore does not
depend on the batch split (dp), and every tp rank, holding the same gathered
logits, draws the same token. Log-probabilities are those of the sampled
token under softmax(logits / temperature), before top-p filtering.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from rlhf_worker.model.decoder import Decoder
from rlhf_worker.parallel.pipeline import broadcast_from_last, recv_from, send_to
from rlhf_worker.parallel.tensor import all_gather_last_dim


@dataclass(frozen=True)
class GenerationConfig:
    max_new_tokens: int
    greedy: bool = True
    temperature: float = 1.0
    top_p: float = 1.0
    eos_token_id: int | None = None
    pad_token_id: int = 0
    seed: int = 0


@dataclass
class GenerationOutput:
    tokens: Tensor  # [B, max_new_tokens] long; pad after a sequence ends
    logprobs: Tensor  # [B, max_new_tokens] float32; 0 after a sequence ends
    lengths: Tensor  # [B] long: generated tokens, the EOS included


def left_pad(
    prompts: Sequence[Sequence[int]], pad: int, width: int | None = None
) -> tuple[Tensor, Tensor]:
    """Token ids and attention mask [B, width], prompts aligned to the right.

    ``width`` defaults to the longest prompt; a prompt longer than a given width
    keeps its last ``width`` tokens (the end of a prompt is what the response follows).
    """
    width = max(len(p) for p in prompts) if width is None else width
    ids = torch.full((len(prompts), width), pad, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for i, prompt in enumerate(prompts):
        tail = list(prompt)[-width:] if width else []
        if tail:
            ids[i, width - len(tail) :] = torch.tensor(tail, dtype=torch.long)
            mask[i, width - len(tail) :] = 1
    return ids, mask


def sequence_generators(seed: int, sample_ids: Sequence[int]) -> list[torch.Generator]:
    return [torch.Generator().manual_seed((seed * 1_000_003 + i) % (2**63)) for i in sample_ids]


def sample(
    logits: Tensor, config: GenerationConfig, generators: Sequence[torch.Generator]
) -> tuple[Tensor, Tensor]:
    """Next tokens and their log-probabilities from full-vocabulary logits [B, V]."""
    logits = logits.float()
    if config.greedy:
        logp = torch.log_softmax(logits, dim=-1)
        tokens = logits.argmax(dim=-1)
        return tokens, logp.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
    logp = torch.log_softmax(logits / config.temperature, dim=-1)
    probs, order = torch.sort(logp.exp(), dim=-1, descending=True, stable=True)
    if config.top_p < 1.0:
        before = probs.cumsum(dim=-1) - probs  # mass of the more likely tokens
        probs = probs.masked_fill(before >= config.top_p, 0.0)  # the most likely always stays
    cdf = probs.cumsum(dim=-1)
    uniforms = torch.stack([torch.rand((), generator=g) for g in generators]).to(logits.device)
    pick = (cdf < (uniforms * cdf[:, -1]).unsqueeze(-1)).sum(dim=-1)
    pick = pick.clamp(max=probs.shape[-1] - 1)
    tokens = order.gather(-1, pick.unsqueeze(-1)).squeeze(-1)
    return tokens, logp.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)


@torch.no_grad()
def generate(
    model: Decoder,
    prompts: Sequence[Sequence[int]],
    config: GenerationConfig,
    sample_ids: Sequence[int] | None = None,
) -> GenerationOutput:
    """Generate for this dp replica's prompts; every rank of the replica gets the result.

    ``sample_ids``: each prompt's global index (its sampling stream); defaults to 0..B-1.
    """
    ctx = model.ctx
    batch, steps = len(prompts), config.max_new_tokens
    device = model.device
    ids, mask = (t.to(device) for t in left_pad(prompts, config.pad_token_id))
    width = ids.shape[1]
    generators = sequence_generators(config.seed, sample_ids or range(batch))
    cache = model.new_cache(batch, width + steps)
    key_valid = torch.zeros((batch, width + steps), dtype=torch.bool, device=device)
    key_valid[:, :width] = mask.bool()
    prompt_len = mask.sum(dim=1)
    out_tokens = torch.full((batch, steps), config.pad_token_id, dtype=torch.long, device=device)
    out_logprobs = torch.zeros((batch, steps), device=device)
    lengths = torch.zeros(batch, dtype=torch.long, device=device)
    done = torch.zeros(batch, dtype=torch.bool, device=device)
    hidden_size = model.config.shape.hidden_size
    for step in range(steps):
        if step == 0:
            inputs, start = ids, 0
            positions = (mask.cumsum(-1) - 1).clamp(min=0)
        else:
            inputs, start = out_tokens[:, step - 1 : step], width + step - 1
            positions = (prompt_len + step - 1).unsqueeze(-1)
            key_valid[:, start] = True
        span = inputs.shape[1]
        if ctx.is_first:
            hidden = model.embed(inputs)
        else:
            hidden = recv_from(ctx, (batch, span, hidden_size), model.dtype, ctx.stage - 1, device)
        hidden = model.run_layers(hidden, positions, key_valid[:, : start + span], cache, start)
        picked = torch.zeros((2, batch), dtype=torch.float64, device=device)
        if not ctx.is_last:
            send_to(ctx, hidden, ctx.stage + 1)
        else:
            tp_ranks = ctx.layout.tp_group(ctx.stage, ctx.dp_rank)
            logits = all_gather_last_dim(model.lm_logits(hidden[:, -1]), ctx.tp_group, tp_ranks)
            tokens, logprobs = sample(logits, config, generators)
            picked = torch.stack([tokens.double(), logprobs.double()])
        picked = broadcast_from_last(ctx, picked)
        tokens, logprobs = picked[0].long(), picked[1].float()
        tokens = tokens.masked_fill(done, config.pad_token_id)
        out_tokens[:, step] = tokens
        out_logprobs[:, step] = logprobs.masked_fill(done, 0.0)
        lengths += (~done).long()
        if config.eos_token_id is not None:
            done |= tokens == config.eos_token_id
        if bool(done.all()):
            break
    return GenerationOutput(tokens=out_tokens, logprobs=out_logprobs, lengths=lengths)
