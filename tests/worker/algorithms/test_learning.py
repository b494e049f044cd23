"""A few gradient steps of each algorithm's loss on a toy categorical policy raise the reward.

The policy is a table of logits, one row per response position (no context), over
a vocabulary of 4 tokens. The reward is the fraction of response tokens equal to
TARGET, so the expected reward is exact: the mean of P(TARGET) over positions.
Half of the responses are one token shorter (padding), which exercises the mask.
"""

from __future__ import annotations

from types import ModuleType

import pytest
import torch

from rlhf_operator.api.algorithm import (
    GrpoParams,
    PpoParams,
    RemaxParams,
    RlooParams,
    SafeRlhfParams,
)
from rlhf_worker.algorithms import grpo, ppo, remax, rloo, safe_rlhf

VOCAB, LENGTH, TARGET, COSTLY = 4, 3, 2, 3
PROMPTS, SAMPLES = 8, 4
STEPS = 15


def expected_reward(logits: torch.Tensor) -> float:
    return float(torch.softmax(logits.detach(), dim=-1)[:, TARGET].mean())


def fraction_of(tokens: torch.Tensor, mask: torch.Tensor, token: int) -> torch.Tensor:
    return ((tokens == token).float() * mask).sum(1) / mask.sum(1)


def rollout(logits: torch.Tensor, ref_logits: torch.Tensor, gen: torch.Generator) -> dict:
    batch = PROMPTS * SAMPLES
    probs = torch.softmax(logits.detach(), dim=-1)
    tokens = torch.multinomial(probs, batch, replacement=True, generator=gen).T  # [B, T]
    mask = torch.ones(batch, LENGTH)
    mask[::2, -1] = 0.0  # every other response ends one token early
    logp = torch.log_softmax(logits.detach(), dim=-1)
    ref_logp = torch.log_softmax(ref_logits, dim=-1)
    positions = torch.arange(LENGTH)
    greedy = logits.detach().argmax(-1).expand(PROMPTS, LENGTH)
    return {
        "tokens": tokens,
        "mask": mask,
        "gen_logprobs": logp[positions, tokens] * mask,
        "ref_logprobs": ref_logp[positions, tokens] * mask,
        "rewards": fraction_of(tokens, mask, TARGET),
        "costs": fraction_of(tokens, mask, COSTLY),
        "greedy_rewards": fraction_of(greedy, torch.ones(PROMPTS, LENGTH), TARGET),
    }


def train(module: ModuleType, params: object, with_critic: bool, num_values: int = 1) -> tuple:
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    logits = torch.zeros(LENGTH, VOCAB, requires_grad=True)
    ref_logits = torch.zeros(LENGTH, VOCAB)
    value_shape = (LENGTH, num_values) if num_values > 1 else (LENGTH,)
    values = torch.zeros(value_shape, requires_grad=True)
    actor_opt = torch.optim.Adam([logits], lr=0.1)
    critic_opt = torch.optim.Adam([values], lr=0.1)
    state = module.new_state(params)
    before = expected_reward(logits)
    for _ in range(STEPS):
        batch = rollout(logits, ref_logits, gen)
        tokens = batch.pop("tokens")
        if with_critic:
            batch["values"] = values.detach().expand(tokens.shape[0], *value_shape)
        adv = module.actor_advantages(batch, params, state, SAMPLES)
        for _ in range(2):  # two PPO epochs: the ratio moves off 1 and clipping matters
            new_logp = torch.log_softmax(logits, dim=-1)[torch.arange(LENGTH), tokens]
            out = module.actor_loss(new_logp, batch, adv.advantages, params)
            actor_opt.zero_grad()
            out.loss.backward()
            actor_opt.step()
            if with_critic:
                new_values = values.expand(tokens.shape[0], *value_shape)
                critic = module.critic_loss(new_values, batch, adv.returns, params)
                critic_opt.zero_grad()
                critic.loss.backward()
                critic_opt.step()
        assert torch.isfinite(out.loss)
    return before, expected_reward(logits), state


CASES = [
    ("ppo", ppo, PpoParams(kl_coef=0.01), True, 1),
    ("grpo", grpo, GrpoParams(group_size=SAMPLES), False, 1),
    (
        "grpo-dr",
        grpo,
        GrpoParams(group_size=SAMPLES, normalize_std=False, loss_aggregation="sequence-mean"),
        False,
        1,
    ),
    ("remax", remax, RemaxParams(kl_coef=0.01), False, 1),
    ("rloo", rloo, RlooParams(group_size=SAMPLES, kl_coef=0.01), False, 1),
    ("safe-rlhf", safe_rlhf, SafeRlhfParams(kl_coef=0.01, cost_limit=1.0), True, 2),
]


@pytest.mark.parametrize(
    ("name", "module", "params", "critic", "num_values"), CASES, ids=[c[0] for c in CASES]
)
def test_loss_steps_raise_expected_reward(
    name: str, module: ModuleType, params: object, critic: bool, num_values: int
) -> None:
    before, after, _ = train(module, params, critic, num_values)
    assert before == pytest.approx(0.25)
    assert after > before + 0.15, f"{name}: expected reward {before:.3f} -> {after:.3f}"


def test_safe_rlhf_lagrange_rises_while_the_cost_limit_is_violated() -> None:
    # Every response costs about 0.25 on average, far above a limit of 0: lambda must grow.
    params = SafeRlhfParams(cost_limit=0.0, lagrangian_init=0.0, lagrangian_lr=0.5)
    _, _, state = train(safe_rlhf, params, True, 2)
    assert state.lagrange > 0.5
