"""Batched generation with a KV cache, under tp, pp and dp.

Prompts of different lengths are left-padded; RoPE positions start at each
prompt's first token, so a sequence's result does not depend on its batch
neighbours. Each step runs the stages in turn (the last stage samples and
broadcasts the tokens over the pipeline; no micro-batch interleaving, so with
pp > 1 only one stage computes at a time). The last stage gathers only the
last position's vocabulary slices over tp to sample.

Sampling is deterministic and stays on the device: the noise for sequence
``i``, step ``s`` and token ``v`` is a hash of (seed, sample id, s, v), computed
by elementwise integer ops on the device (no host generator, no copy per step),
and the token is the winner of an exponential race, argmax(p_v / E_v) with
E_v = -log(u_v), which draws v with probability p_v without sorting the
vocabulary (the sort happens only for top-p < 1, which needs the nucleus). The
result therefore does not depend on the batch split (dp), and every tp rank,
holding the same gathered logits, draws the same token. Log-probabilities are
those of the sampled token under softmax(logits / temperature), before top-p
filtering. The loop asks the device whether every sequence has ended only every
`STOP_CHECK_EVERY` steps: each ask is a host sync.
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
    prompts: Sequence[Sequence[int]],
    pad: int,
    width: int | None = None,
    *,
    device: torch.device | str,
) -> tuple[Tensor, Tensor]:
    """Token ids and attention mask [B, width] on `device`, prompts aligned to the right.

    ``width`` defaults to the longest prompt; a prompt longer than a given width
    keeps its last ``width`` tokens (the end of a prompt is what the response follows).
    Built as lists and copied once: one host-to-device copy per tensor, not per prompt.
    """
    width = max(len(p) for p in prompts) if width is None else width
    tails = [list(prompt)[-width:] if width else [] for prompt in prompts]
    ids = [[pad] * (width - len(tail)) + tail for tail in tails]
    mask = [[0] * (width - len(tail)) + [1] * len(tail) for tail in tails]
    return (
        torch.tensor(ids, dtype=torch.long, device=device).reshape(len(prompts), width),
        torch.tensor(mask, dtype=torch.long, device=device).reshape(len(prompts), width),
    )


_MASK32 = 0xFFFFFFFF
STOP_CHECK_EVERY = 8


def _mix32(x: Tensor) -> Tensor:
    """A 32-bit integer hash (xor-shift-multiply) of int64 values in [0, 2**32).

    The multiplier is below 2**31, so no product overflows int64 on any device.
    """
    x = x ^ (x >> 16)
    x = (x * 0x45D9F3B) & _MASK32
    x = x ^ (x >> 16)
    x = (x * 0x45D9F3B) & _MASK32
    return x ^ (x >> 16)


def sample_keys(seed: int, sample_ids: Sequence[int], device: torch.device | str) -> Tensor:
    """Each sequence's sampling stream [B] (int64): a function of the seed and its sample id."""
    keys = [(seed * 1_000_003 + i) & _MASK32 for i in sample_ids]
    return _mix32(torch.tensor(keys, dtype=torch.long, device=device))


def race_noise(keys: Tensor, step: int, vocab: int) -> Tensor:
    """E[b, v] = -log(u) with u uniform in (0, 1) hashed from (keys[b], step, v): [B, V] float32."""
    at_step = _mix32((keys + step * 0x27D4EB2F) & _MASK32)
    tokens = torch.arange(vocab, dtype=torch.long, device=keys.device)
    bits = _mix32((at_step.unsqueeze(1) + tokens * 0x61C88647) & _MASK32) >> (32 - UNIFORM_BITS)
    return -torch.log(uniforms(bits))


# float32 holds 24 significant bits, so (bits + 0.5) is exact below 2**23 only: with 24
# bits the largest value rounds up to 1.0, E = -log(1) = 0, and that token wins the race
# whatever its probability (one draw in 2**24 per vocabulary entry: ~1% of the steps at a
# vocabulary of 150k).
UNIFORM_BITS = 23


def uniforms(bits: Tensor) -> Tensor:
    """Uniform floats strictly inside (0, 1) from integers in [0, 2**UNIFORM_BITS)."""
    return (bits.float() + 0.5) * (1.0 / (1 << UNIFORM_BITS))


def sample(
    logits: Tensor, config: GenerationConfig, keys: Tensor, step: int
) -> tuple[Tensor, Tensor]:
    """Next tokens and their log-probabilities from full-vocabulary logits [B, V].

    `keys` are the sequences' streams (`sample_keys`), `step` the position in the response.
    """
    logits = logits.float()
    if config.greedy:
        logp = torch.log_softmax(logits, dim=-1)
        tokens = logits.argmax(dim=-1)
        return tokens, logp.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
    logp = torch.log_softmax(logits / config.temperature, dim=-1)
    # argmax(p / E) = argmax(log p - log E): a draw from p, no sort, no host sync.
    score = logp - torch.log(race_noise(keys, step, logits.shape[-1]))
    if config.top_p < 1.0:
        probs, order = torch.sort(logp.exp(), dim=-1, descending=True, stable=True)
        before = probs.cumsum(dim=-1) - probs  # mass of the more likely tokens
        dropped = before >= config.top_p  # in sorted order; back to vocabulary order:
        outside = torch.zeros_like(dropped).scatter(-1, order, dropped)
        score = score.masked_fill(outside, float("-inf"))  # the most likely always stays
    tokens = score.argmax(dim=-1)
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
    ids, mask = left_pad(prompts, config.pad_token_id, device=device)
    width = ids.shape[1]
    keys = sample_keys(config.seed, sample_ids or range(batch), device)
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
            tokens, logprobs = sample(logits, config, keys, step)
            picked = torch.stack([tokens.double(), logprobs.double()])
        picked = broadcast_from_last(ctx, picked)
        tokens, logprobs = picked[0].long(), picked[1].float()
        tokens = tokens.masked_fill(done, config.pad_token_id)
        out_tokens[:, step] = tokens
        out_logprobs[:, step] = logprobs.masked_fill(done, 0.0)
        lengths += (~done).long()
        if config.eos_token_id is not None:
            done |= tokens == config.eos_token_id
        # Asking whether all have ended is a host sync: not every step.
        if (step + 1) % STOP_CHECK_EVERY == 0 and bool(done.all()):
            break
    return GenerationOutput(tokens=out_tokens, logprobs=out_logprobs, lengths=lengths)
