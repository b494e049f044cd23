"""Engines under every layout of the matrix match the single-process reference.

tp in {1, 2, 4} x pp in {1, 2} x dp in {1, 2} (all but tp4 x pp2 x dp2, which needs
16 ranks) run in one world of 8 gloo processes, on shuffled rank subsets, several
layouts at once on disjoint ranks. Every rank loads its own slices of the
checkpoint, then runs forward (log-probabilities and values), a training step of
the actor and of the critic, and generation (greedy with EOS, and sampled), and
compares what it holds with the reference computed by one process.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from rlhf_operator.contract.sharding import Layout, rank_shards
from rlhf_worker.engine import (
    GenerationConfig,
    OptimizerConfig,
    Trainer,
    forward_logprobs,
    forward_values,
    generate,
)
from rlhf_worker.model import Decoder, load_shards
from rlhf_worker.model.tiny import build_tiny_model, tiny_hf_config
from rlhf_worker.parallel.data import dp_slice
from rlhf_worker.parallel.groups import context_for, groups_for, single_process_context
from tests.worker.distributed import run_distributed
from tests.worker.grads import captured_grads, dp_chunk

WORLD = 8
# Rounds of layouts that run at the same time on disjoint ranks: (pp, dp, tp, ranks, model).
# "llama" is the tiny preset; "qwen2-tied" adds q/k/v biases and tied embeddings, whose
# two copies (first and last stage) must take the same step, here over pp = 4.
Spec = tuple[int, int, int, tuple[int, ...], str]
ROUNDS: list[list[Spec]] = [
    [(2, 1, 4, (7, 6, 5, 4, 3, 2, 1, 0), "llama")],
    [(1, 2, 4, (0, 1, 2, 3, 4, 5, 6, 7), "llama")],
    [(2, 2, 2, (3, 1, 0, 2, 6, 7, 5, 4), "llama")],
    [(2, 1, 2, (0, 2, 4, 6), "llama"), (1, 2, 2, (1, 3, 5, 7), "llama")],
    [(1, 2, 2, (6, 7, 4, 5), "llama"), (1, 1, 4, (0, 1, 2, 3), "llama")],
    [
        (1, 1, 1, (5,), "llama"),
        (1, 1, 2, (0, 3), "llama"),
        (2, 1, 1, (1, 4), "llama"),
        (1, 2, 1, (7, 6), "llama"),
    ],
    [(2, 2, 1, (2, 0, 7, 1), "llama"), (4, 1, 1, (6, 5, 4, 3), "qwen2-tied")],
]
OPTIM = OptimizerConfig(lr=1e-3, betas=(0.9, 0.95), eps=1e-6, weight_decay=0.1, max_grad_norm=0.5)
MICRO_BATCHES = 2
TOL = 2e-5


def make_batch() -> dict[str, Tensor]:
    """Four sequences of 12 tokens, left-padded to different lengths."""
    gen = torch.Generator().manual_seed(7)
    ids = torch.randint(3, 512, (4, 12), generator=gen)
    mask = torch.ones_like(ids)
    for row, pad in enumerate([0, 3, 1, 5]):
        ids[row, :pad] = 0
        mask[row, :pad] = 0
    advantages = torch.randn(4, 11, generator=gen)
    returns = torch.randn(4, 12, generator=gen)
    return {"input_ids": ids, "attention_mask": mask, "advantages": advantages, "returns": returns}


PROMPTS = [[1, 40, 41], [1, 50, 51, 52, 53], [1, 60], [1, 70, 71, 72, 73, 74]]
TOTAL_TOKENS = 4 * 11


def actor_loss(logprobs: Tensor, mb: Mapping[str, Tensor]) -> Tensor:
    """A policy-gradient-like loss: this micro-batch's share of the global token mean."""
    mask = (mb["attention_mask"][:, 1:] * mb["attention_mask"][:, :-1]).float()
    return -(logprobs * mb["advantages"] * mask).sum() / TOTAL_TOKENS


def critic_loss(values: Tensor, mb: Mapping[str, Tensor]) -> Tensor:
    mask = mb["attention_mask"].float()
    return ((values - mb["returns"]) ** 2 * mask).sum() / (4 * 12)


def generation_configs(eos: int) -> dict[str, GenerationConfig]:
    return {
        "greedy": GenerationConfig(max_new_tokens=6, eos_token_id=eos),
        "sampled": GenerationConfig(
            max_new_tokens=6, greedy=False, temperature=0.8, top_p=0.9, seed=11
        ),
    }


@dataclass
class Reference:
    logprobs: Tensor
    values: Tensor
    actor_weights: dict[str, Tensor]
    actor_grads: dict[str, Tensor]
    actor_norm: float
    actor_loss: float
    critic_weights: dict[str, Tensor]
    critic_grads: dict[str, Tensor]
    critic_norm: float
    generations: dict[str, tuple[Tensor, Tensor, Tensor]]
    eos: int


def run_everything(
    ctx: Any,
    lm_dir: Path,
    value_dir: Path,
    batch: dict[str, Tensor],
    eos: int,
    sample_ids: list[int],
    device: str | torch.device = "cpu",
) -> dict[str, Any]:
    """Everything one rank (or the reference process) computes under one layout, with the
    model and the batch on ``device`` (as the runtime moves loaded shards there)."""
    out: dict[str, Any] = {}
    batch = {k: v.to(device) for k, v in batch.items()}
    config, shards = load_shards(lm_dir, ctx.layout, ctx.rank)
    actor = Decoder(config, ctx, {k: v.to(device) for k, v in shards.items()})
    out["logprobs"] = forward_logprobs(actor, batch, micro_batches=MICRO_BATCHES)
    prompts = [PROMPTS[i] for i in sample_ids]
    for name, gen_config in generation_configs(eos).items():
        result = generate(actor, prompts, gen_config, sample_ids=sample_ids)
        out[name] = (result.tokens, result.logprobs, result.lengths)
    trainer = Trainer(actor, OPTIM)
    out["actor_grads"] = captured_grads(trainer)
    stats = trainer.step(batch, actor_loss, micro_batches=MICRO_BATCHES)
    out["actor_norm"], out["actor_loss"] = stats.grad_norm, stats.loss
    out["actor"] = actor.local_state()
    vconfig, vshards = load_shards(value_dir, ctx.layout, ctx.rank, head="value")
    critic = Decoder(vconfig, ctx, {k: v.to(device) for k, v in vshards.items()})
    out["values"] = forward_values(critic, batch, micro_batches=MICRO_BATCHES)
    ctrainer = Trainer(critic, OPTIM, output="values")
    out["critic_grads"] = captured_grads(ctrainer)
    cstats = ctrainer.step(batch, critic_loss, micro_batches=MICRO_BATCHES)
    out["critic_norm"] = cstats.grad_norm
    out["critic"] = critic.local_state()
    return out


def compute_reference(lm_dir: Path, value_dir: Path) -> Reference:
    ctx = single_process_context()
    batch = make_batch()
    ids = list(range(len(PROMPTS)))
    probe = run_everything(ctx, lm_dir, value_dir, batch, eos=-1, sample_ids=ids)
    # EOS = the third greedy token of prompt 0, so that sequence stops early.
    eos = int(probe["greedy"][0][0, 2])
    ref = run_everything(ctx, lm_dir, value_dir, batch, eos=eos, sample_ids=ids)
    first = probe["greedy"][0][0].tolist().index(eos)
    assert int(ref["greedy"][2][0]) == first + 1 < 6

    def detach(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
        return {n: p.detach().clone() for n, p in state.items()}

    def unflatten(grads: Mapping[str, Tensor], state: Mapping[str, Tensor]) -> dict[str, Tensor]:
        return {n: g.view(state[n].shape) for n, g in grads.items()}  # dp = 1: whole shards

    return Reference(
        logprobs=ref["logprobs"],
        values=ref["values"],
        actor_weights=detach(ref["actor"]),
        actor_grads=unflatten(ref["actor_grads"], ref["actor"]),
        actor_norm=ref["actor_norm"],
        actor_loss=ref["actor_loss"],
        critic_weights=detach(ref["critic"]),
        critic_grads=unflatten(ref["critic_grads"], ref["critic"]),
        critic_norm=ref["critic_norm"],
        generations={k: ref[k] for k in generation_configs(eos)},
        eos=eos,
    )


def _max_diff(a: Tensor, b: Tensor) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return float((a.float().cpu() - b.float().cpu()).abs().max()) if a.numel() else 0.0


def check_layout(
    rank: int,
    layout: Layout,
    ref: Reference,
    lm_dir: Path,
    value_dir: Path,
    device: str | torch.device = "cpu",
) -> dict[str, float]:
    """Run one layout on this rank (on ``device``) and measure its distance to the reference."""
    ctx = context_for(layout, rank)
    full = make_batch()
    part = dp_slice(full["input_ids"].shape[0], layout.dp, ctx.dp_rank)
    batch = {k: v[part] for k, v in full.items()}
    sample_ids = list(range(len(PROMPTS)))[part]
    got = run_everything(ctx, lm_dir, value_dir, batch, ref.eos, sample_ids, device)
    diffs = {
        "logprobs": _max_diff(got["logprobs"], ref.logprobs[part]),
        "values": _max_diff(got["values"], ref.values[part]),
        "actor_norm": abs(got["actor_norm"] - ref.actor_norm),
        "actor_loss": abs(got["actor_loss"] - ref.actor_loss),
        "critic_norm": abs(got["critic_norm"] - ref.critic_norm),
    }
    for name, (tokens, logprobs, lengths) in ref.generations.items():
        g_tokens, g_logprobs, g_lengths = got[name]
        diffs[f"{name}_tokens"] = float((g_tokens.cpu() != tokens[part]).sum())
        diffs[f"{name}_lengths"] = float((g_lengths.cpu() != lengths[part]).sum())
        diffs[f"{name}_logprobs"] = _max_diff(g_logprobs, logprobs[part])
    for role, weights, grads in (
        ("actor", ref.actor_weights, ref.actor_grads),
        ("critic", ref.critic_weights, ref.critic_grads),
    ):
        state, got_grads = got[role], got[f"{role}_grads"]  # after the step
        regions = rank_shards(shape_of(role, lm_dir, value_dir), layout, rank)
        assert set(regions) == set(state)
        w_diff = g_diff = 0.0
        for name, region in regions.items():
            index = tuple(slice(a, b) for a, b in region)
            param = state[name]
            w_diff = max(w_diff, _max_diff(param.detach(), weights[name][index]))
            expected = dp_chunk(grads[name][index], layout.dp, ctx.dp_rank)
            g_diff = max(g_diff, _max_diff(got_grads[name], expected))
        diffs[f"{role}_weights"], diffs[f"{role}_grads"] = w_diff, g_diff
    return diffs


def too_far(diffs: dict[str, float], tol: float) -> list[str]:
    """The distances over tolerance: tokens and lengths must match exactly."""
    out = []
    for what, diff in diffs.items():
        exact = what.endswith(("_tokens", "_lengths"))
        if (exact and diff != 0) or (not exact and diff > tol):
            out.append(f"{what} differs by {diff:.3g}")
    return out


def shape_of(role: str, lm_dir: Path, value_dir: Path) -> Any:
    from rlhf_worker.model import ModelConfig, read_config

    if role == "actor":
        return ModelConfig.from_hf(read_config(lm_dir)).shape
    return ModelConfig.from_hf(read_config(value_dir), head="value").shape


def _world(
    rank: int, world_size: int, models: dict[str, tuple[Reference, Path]], value_dir: Path
) -> dict[str, dict[str, float]]:
    torch.manual_seed(0)
    rounds = [[(Layout(ranks=r, pp=p, dp=d, tp=t), m) for p, d, t, r, m in rnd] for rnd in ROUNDS]
    for rnd in rounds:  # every rank creates every layout's groups, in the same order
        for layout, _ in rnd:
            groups_for(layout)
    results: dict[str, dict[str, float]] = {}
    for rnd in rounds:
        for layout, model in rnd:
            if rank in layout.ranks:
                ref, lm_dir = models[model]
                key = f"{model} pp{layout.pp}-dp{layout.dp}-tp{layout.tp}@{layout.ranks}"
                results[key] = check_layout(rank, layout, ref, lm_dir, value_dir)
    return results


def test_round_plan_covers_the_matrix() -> None:
    seen = set()
    for rnd in ROUNDS:
        used = [r for _, _, _, ranks, _ in rnd for r in ranks]
        assert len(used) == len(set(used)) and set(used) <= set(range(WORLD))
        seen |= {(p, d, t) for p, d, t, _, model in rnd if model == "llama"}
    wanted = {(p, d, t) for p in (1, 2) for d in (1, 2) for t in (1, 2, 4) if p * d * t <= WORLD}
    assert seen == wanted


def test_every_layout_matches_the_single_process_reference(
    tiny_lm_dir: Path, tiny_value_dir: Path, tmp_path: Path
) -> None:
    qwen_config = {**tiny_hf_config(), "model_type": "qwen2", "tie_word_embeddings": True}
    qwen_dir = build_tiny_model(tmp_path / "qwen2-tied", qwen_config, seed=99)
    models = {
        "llama": (compute_reference(tiny_lm_dir, tiny_value_dir), tiny_lm_dir),
        "qwen2-tied": (compute_reference(qwen_dir, tiny_value_dir), qwen_dir),
    }
    per_rank = run_distributed(_world, WORLD, models, tiny_value_dir, timeout=500)
    checked = set()
    failures = []
    for rank, results in enumerate(per_rank):
        for key, diffs in results.items():
            checked.add(key)
            failures += [f"{key} rank {rank}: {what}" for what in too_far(diffs, TOL)]
    assert len(checked) == sum(len(rnd) for rnd in ROUNDS)
    assert not failures, "\n".join(failures)
