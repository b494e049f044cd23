"""ReMax: REINFORCE with the reward of the greedy response as baseline.

Calls (``CALLS``): actor_gen, actor_greedy_gen, ref_inf, reward_inf,
reward_greedy_inf, actor_train. There is one greedy response per prompt
(``greedy_rewards`` is ``[B / samples_per_prompt]``; ``[B]`` with the value
repeated is accepted too). The KL penalty goes into the per-token reward; a
token's advantage is its reward-to-go minus the greedy reward of its prompt.
"""

from __future__ import annotations

from torch import Tensor

from rlhf_operator.api.algorithm import RemaxParams
from rlhf_operator.api.dataflow import calls_for
from rlhf_worker.algorithms.core import (
    Advantages,
    Batch,
    LossOut,
    NoState,
    kl_metrics,
    need,
    policy_loss,
    returns_to_go,
    reward_kl,
    token_rewards,
)

NAME = "remax"
CALLS = calls_for(NAME)
Params = RemaxParams


def new_state(params: RemaxParams) -> NoState:
    return NoState()


def greedy_baseline(greedy_rewards: Tensor, batch_size: int, samples_per_prompt: int) -> Tensor:
    """The greedy reward of each sample's prompt, [B]."""
    greedy = greedy_rewards.float().flatten()
    if greedy.shape[0] == batch_size:
        return greedy
    if greedy.shape[0] * samples_per_prompt == batch_size:
        return greedy.repeat_interleave(samples_per_prompt)
    raise ValueError(
        f"{NAME}: {greedy.shape[0]} greedy rewards for {batch_size} samples at "
        f"{samples_per_prompt} samples per prompt (expected one per prompt)"
    )


def actor_advantages(
    batch: Batch, params: RemaxParams, state: NoState, samples_per_prompt: int = 1
) -> Advantages:
    """Per-token advantages [B, T]: reward-to-go (KL-penalised) minus the greedy baseline."""
    mask = need(batch, "mask", NAME).float()
    rewards = need(batch, "rewards", NAME).float()
    baseline = greedy_baseline(
        need(batch, "greedy_rewards", NAME), rewards.shape[0], samples_per_prompt
    )
    kl = reward_kl(batch, params.kl_coef, params.kl_estimator, params.kl_clamp)
    to_go = returns_to_go(token_rewards(rewards, mask, kl, params.kl_coef), mask)
    advantages = (to_go - baseline[:, None]) * mask
    metrics = {
        "reward_mean": float(rewards.mean()),
        "greedy_reward_mean": float(baseline.mean()),
        **kl_metrics(kl, mask),
    }
    return Advantages(advantages, None, metrics)


def actor_loss(
    new_logprobs: Tensor,
    batch: Batch,
    advantages: Tensor,
    params: RemaxParams,
    entropy: Tensor | None = None,
) -> LossOut:
    mask = need(batch, "mask", NAME).float()
    return policy_loss(
        new_logprobs, need(batch, "gen_logprobs", NAME), advantages, mask, params.clip_ratio
    )
