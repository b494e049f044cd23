"""Single-process engine behaviour: generation against transformers, sampling, AdamW."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from rlhf_operator.contract.sharding import Layout
from rlhf_worker.engine import GenerationConfig, generate
from rlhf_worker.engine.adamw import AdamWState, adamw_step
from rlhf_worker.engine.generate import (
    UNIFORM_BITS,
    left_pad,
    race_noise,
    sample,
    sample_keys,
    uniforms,
)
from rlhf_worker.model import Decoder, load_decoder

PROMPTS = [[1, 30, 31, 32], [1, 40], [1, 50, 51, 52, 53, 54, 55]]


def model_from(model_dir: Path) -> Decoder:
    return load_decoder(model_dir, Layout(ranks=(0,)), 0)


def test_left_pad_aligns_prompts_right_to_the_longest_or_a_fixed_width() -> None:
    ids, mask = left_pad([[5, 6], [7, 8, 9], []], pad=0, device="cpu")
    assert ids.tolist() == [[0, 5, 6], [7, 8, 9], [0, 0, 0]]
    assert mask.tolist() == [[0, 1, 1], [1, 1, 1], [0, 0, 0]]
    ids, mask = left_pad([[5, 6], [7, 8, 9]], pad=0, width=4, device="cpu")
    assert ids.tolist() == [[0, 0, 5, 6], [0, 7, 8, 9]]
    # A prompt longer than the width keeps its end: the response follows it.
    ids, mask = left_pad([[1, 2, 3, 4, 5]], pad=0, width=3, device="cpu")
    assert ids.tolist() == [[3, 4, 5]] and mask.tolist() == [[1, 1, 1]]


def test_greedy_generation_equals_transformers_with_left_padding(tiny_lm_dir: Path) -> None:
    transformers = pytest.importorskip("transformers")
    hf = transformers.AutoModelForCausalLM.from_pretrained(tiny_lm_dir, dtype=torch.float32)
    ids, mask = left_pad(PROMPTS, pad=0, device="cpu")
    ref = hf.generate(ids, attention_mask=mask, max_new_tokens=8, do_sample=False, pad_token_id=0)[
        :, ids.shape[1] :
    ]
    # Stop sequence 1 early: its third token becomes the EOS.
    eos = int(ref[1, 2])
    out = generate(model_from(tiny_lm_dir), PROMPTS, GenerationConfig(8, eos_token_id=eos))
    for row in range(len(PROMPTS)):
        tokens = ref[row].tolist()
        length = tokens.index(eos) + 1 if eos in tokens else 8
        assert int(out.lengths[row]) == length
        assert out.tokens[row, :length].tolist() == tokens[:length]
        assert out.tokens[row, length:].eq(0).all()
        assert out.logprobs[row, length:].eq(0).all()
    assert int(out.lengths[1]) <= 3
    # The returned log-probabilities are the model's own for those tokens.
    full = torch.cat([ids, out.tokens], dim=1)
    full_mask = torch.cat([mask, torch.ones_like(out.tokens)], dim=1)
    positions = (full_mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        logits = hf(full, attention_mask=full_mask, position_ids=positions).logits
    logp = torch.log_softmax(logits[:, ids.shape[1] - 1 : -1], -1)
    logp = logp.gather(-1, out.tokens[..., None]).squeeze(-1)
    valid = torch.arange(8)[None] < out.lengths[:, None]
    torch.testing.assert_close(out.logprobs[valid], logp[valid], atol=1e-4, rtol=1e-4)


def test_seeded_sampling_is_deterministic_and_per_sequence(tiny_lm_dir: Path) -> None:
    model = model_from(tiny_lm_dir)
    config = GenerationConfig(6, greedy=False, temperature=1.2, top_p=0.95, seed=5)
    a = generate(model, PROMPTS, config, sample_ids=[10, 11, 12])
    b = generate(model, PROMPTS, config, sample_ids=[10, 11, 12])
    assert torch.equal(a.tokens, b.tokens)
    # A sequence's result does not depend on its neighbours (batch split under dp).
    alone = generate(model, PROMPTS[1:2], config, sample_ids=[11])
    assert torch.equal(alone.tokens[0], a.tokens[1])
    other = generate(model, PROMPTS, GenerationConfig(6, greedy=False, seed=6), [10, 11, 12])
    assert not torch.equal(other.tokens, a.tokens)


def test_top_p_keeps_only_the_nucleus() -> None:
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]])).repeat(400, 1)
    keys = sample_keys(0, range(400), "cpu")
    tokens, logprobs = sample(logits, GenerationConfig(1, greedy=False, top_p=0.7), keys, 0)
    assert set(tokens.tolist()) == {0, 1}  # 0.5 + 0.3 reach 0.7
    torch.testing.assert_close(logprobs, logits.log_softmax(-1).gather(-1, tokens[:, None])[:, 0])
    share = (tokens == 0).float().mean().item()
    assert 0.5 < share < 0.75  # renormalised 0.625
    tiny_p, _ = sample(logits, GenerationConfig(1, greedy=False, top_p=1e-6), keys, 0)
    assert tiny_p.eq(0).all()


def test_the_exponential_race_draws_each_token_with_its_probability() -> None:
    probs = torch.tensor([0.4, 0.3, 0.2, 0.1])
    logits = probs.log().repeat(4000, 1)
    config = GenerationConfig(1, greedy=False)
    keys = sample_keys(3, range(4000), "cpu")
    drawn = torch.cat([sample(logits, config, keys, step)[0] for step in range(5)])
    share = torch.bincount(drawn, minlength=4).float() / drawn.numel()
    # 20000 draws: a share's standard error is at most 0.0035.
    torch.testing.assert_close(share, probs, atol=0.015, rtol=0)
    # Streams differ by step and by sample, and the noise is a pure function of both.
    assert not torch.equal(race_noise(keys, 0, 4), race_noise(keys, 1, 4))
    assert torch.equal(race_noise(keys[5:9], 2, 4), race_noise(keys, 2, 4)[5:9])


def test_the_race_s_noise_is_never_zero_so_no_unlikely_token_wins_by_it() -> None:
    # The extremes of the hashed integers: u stays strictly inside (0, 1), E = -log(u) > 0.
    # (With 24 bits the largest integer gave u == 1.0 in float32, E == 0: that token won
    # whatever its probability, once per 2**24 draws: 47 of 5120 draws at a 152k vocabulary.)
    bits = torch.tensor([0, 1, (1 << UNIFORM_BITS) - 2, (1 << UNIFORM_BITS) - 1])
    u = uniforms(bits)
    assert bool(((u > 0) & (u < 1)).all()) and bool((-torch.log(u) > 0).all())
    noise = race_noise(sample_keys(0, range(64), "cpu"), 0, 50_000)
    assert bool(torch.isfinite(noise).all()) and bool((noise > 0).all())
    # A token of probability ~1e-13 is never drawn over 64 x 20 draws.
    logits = torch.tensor([[30.0] + [0.0] * 4095]).repeat(64, 1)
    keys = sample_keys(1, range(64), "cpu")
    drawn = torch.cat(
        [sample(logits, GenerationConfig(1, greedy=False), keys, t)[0] for t in range(20)]
    )
    assert bool(drawn.eq(0).all())


def test_adamw_matches_torch() -> None:
    gen = torch.Generator().manual_seed(0)
    ours = {"a": torch.nn.Parameter(torch.randn(5, 3, generator=gen))}
    theirs = torch.nn.Parameter(ours["a"].detach().clone())
    optimizer = torch.optim.AdamW([theirs], lr=1e-2, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1)
    state = AdamWState()
    for _ in range(4):
        grad = torch.randn(5, 3, generator=gen)
        ours["a"].grad, theirs.grad = grad.clone(), grad.clone()
        adamw_step(ours, {"a": grad}, state, lr=1e-2, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1)
        optimizer.step()
    torch.testing.assert_close(ours["a"].detach(), theirs.detach(), atol=1e-7, rtol=1e-6)
