"""RLOO: REINFORCE with the leave-one-out mean of the group as baseline.

Calls (``CALLS``): actor_gen, ref_inf, reward_inf, actor_train. The whole
response is one action (Ahmadian et al., 2024): its score is the reward minus
``kl_coef`` times the sequence's summed KL to the reference, and its advantage
is that score minus the mean score of the other responses to the same prompt,
placed on every token. The loss is the clipped surrogate (plain REINFORCE on
the first pass over the samples, where the ratio is 1).
"""

from __future__ import annotations

from torch import Tensor

from rlhf_operator.api.algorithm import RlooParams
from rlhf_operator.api.dataflow import calls_for
from rlhf_worker.algorithms.core import (
    Advantages,
    Batch,
    LossOut,
    NoState,
    group_view,
    kl_metrics,
    masked_sum,
    need,
    policy_loss,
    reward_kl,
)

NAME = "rloo"
CALLS = calls_for(NAME)
Params = RlooParams


def new_state(params: RlooParams) -> NoState:
    return NoState()


def leave_one_out(scores: Tensor, samples_per_prompt: int) -> Tensor:
    """[B] scores -> [B] score minus the mean of the other samples of its group."""
    n = samples_per_prompt
    if n < 2:
        raise ValueError(f"{NAME}: needs at least 2 samples per prompt, got {n}")
    groups = group_view(scores, n, f"{NAME} batch")
    others_mean = (groups.sum(dim=1, keepdim=True) - groups) / (n - 1)
    return (groups - others_mean).flatten()


def actor_advantages(
    batch: Batch, params: RlooParams, state: NoState, samples_per_prompt: int
) -> Advantages:
    """Per-token advantages [B, T]: the response's leave-one-out advantage on each token."""
    mask = need(batch, "mask", NAME).float()
    rewards = need(batch, "rewards", NAME).float()
    kl = reward_kl(batch, params.kl_coef, params.kl_estimator, params.kl_clamp)
    scores = rewards if kl is None else rewards - params.kl_coef * masked_sum(kl, mask, dim=1)
    advantages = leave_one_out(scores, samples_per_prompt)
    metrics = {"reward_mean": float(rewards.mean()), "score_mean": float(scores.mean())}
    return Advantages(advantages[:, None] * mask, None, {**metrics, **kl_metrics(kl, mask)})


def actor_loss(
    new_logprobs: Tensor,
    batch: Batch,
    advantages: Tensor,
    params: RlooParams,
    entropy: Tensor | None = None,
) -> LossOut:
    mask = need(batch, "mask", NAME).float()
    return policy_loss(
        new_logprobs, need(batch, "gen_logprobs", NAME), advantages, mask, params.clip_ratio
    )
