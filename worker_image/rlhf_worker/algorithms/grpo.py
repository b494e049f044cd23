"""GRPO: group-normalised advantages, no critic; the KL term is part of the loss.

Calls (``CALLS``): actor_gen, ref_inf, reward_inf, actor_train. Each prompt's
``samples_per_prompt`` responses are one group (consecutive in the batch). A
response's advantage is its reward minus the group mean, divided by the group's
standard deviation unless ``normalize_std`` is off (Dr. GRPO), and is the same
on every one of its tokens. The loss is the clipped surrogate plus
``kl_coef * KL(pi_theta || pi_ref)`` per token (k3 by default, differentiated
through the current log-probabilities), averaged per ``loss_aggregation``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from rlhf_operator.api.algorithm import GrpoParams
from rlhf_operator.api.dataflow import calls_for
from rlhf_worker.algorithms.core import (
    EPS,
    Advantages,
    Batch,
    LossOut,
    NoState,
    aggregate,
    clip_of,
    clipped_surrogate,
    group_view,
    kl_metrics,
    kl_per_token,
    masked_mean,
    masked_sum,
    need,
    policy_metrics,
    reward_kl,
    zero_padding,
)

NAME = "grpo"
CALLS = calls_for(NAME)
Params = GrpoParams


def new_state(params: GrpoParams) -> NoState:
    return NoState()


# A group whose rewards spread less than this, relative to their size, scored the same:
# its advantage is 0. Its mean is off its rewards by a rounding step, and its std is 0 or a
# rounding error; dividing one by the other gave every token of 6 rewards of 17.3 an
# advantage of +-190 (float32). A few float32 ulps; rewards that differ by more are kept.
SPREAD_TOLERANCE = 1e-6


def flat_groups(groups: Tensor) -> Tensor:
    """[G] True where a [G, n] group's rewards are all the same (within the tolerance)."""
    spread = groups.max(dim=1).values - groups.min(dim=1).values
    scale = groups.abs().max(dim=1).values
    return spread <= SPREAD_TOLERANCE * scale


def group_advantages(rewards: Tensor, samples_per_prompt: int, normalize_std: bool) -> Tensor:
    """[B] rewards -> [B] advantages centred (and scaled) within each prompt's group;
    exactly 0 for a group whose rewards are all the same."""
    if samples_per_prompt < 2:
        raise ValueError(f"{NAME}: needs at least 2 samples per prompt, got {samples_per_prompt}")
    # float64: the group's mean and std of float32 rewards, without their rounding.
    groups = group_view(rewards.double(), samples_per_prompt, f"{NAME} batch")
    centred = groups - groups.mean(dim=1, keepdim=True)
    if normalize_std:
        # Unbiased std, as in DeepSeekMath.
        centred = centred / (groups.std(dim=1, keepdim=True) + EPS)
    centred = torch.where(flat_groups(groups)[:, None], torch.zeros_like(centred), centred)
    return centred.flatten().to(torch.float32)


def overlong_penalty(mask: Tensor, buffer: int | None, penalty: float) -> Tensor:
    """DAPO's soft overlong punishment, per response [B]: 0 up to `buffer` tokens short of
    the response budget (the mask's width, rollout.maxNewTokens), then falling linearly to
    -penalty at the budget (where a response that never ended stops)."""
    if buffer is None:
        return torch.zeros(mask.shape[0], device=mask.device)
    budget = mask.shape[1]
    start = max(0, budget - buffer)
    over = (mask.sum(dim=1) - start).clamp(min=0)
    return -penalty * over / max(1, budget - start)


def actor_advantages(
    batch: Batch, params: GrpoParams, state: NoState, samples_per_prompt: int
) -> Advantages:
    """Per-token advantages [B, T] (the response's group advantage on each token)."""
    mask = need(batch, "mask", NAME).float()
    rewards = need(batch, "rewards", NAME).float()
    penalty = overlong_penalty(mask, params.overlong_buffer, params.overlong_penalty)
    rewards = rewards + penalty
    advantages = group_advantages(rewards, samples_per_prompt, params.normalize_std)
    groups = group_view(rewards, samples_per_prompt)
    # The KL itself is part of the loss; this is the rollout's, for reporting.
    rollout_kl = reward_kl(batch, params.kl_coef, params.kl_estimator, params.kl_clamp)
    metrics = {
        **kl_metrics(rollout_kl, mask),
        "reward_mean": float(rewards.float().mean()),
        "reward_group_std": float(groups.std(dim=1).mean()),
        # Groups whose responses all scored the same teach nothing (advantage 0).
        "zero_std_fraction": float(flat_groups(groups).float().mean()),
        "overlong_fraction": float((penalty < 0).float().mean()),
    }
    return Advantages(advantages[:, None] * mask, None, metrics)


def actor_loss(
    new_logprobs: Tensor,
    batch: Batch,
    advantages: Tensor,
    params: GrpoParams,
    entropy: Tensor | None = None,
) -> LossOut:
    """Clipped surrogate plus the KL to the reference, per token, then aggregated."""
    mask = need(batch, "mask", NAME).float()
    old_logprobs = need(batch, "gen_logprobs", NAME)
    per_token, was_clipped = clipped_surrogate(
        new_logprobs, old_logprobs, advantages, mask, clip_of(params)
    )
    metrics = policy_metrics(new_logprobs, old_logprobs, was_clipped, mask)
    if params.kl_coef > 0.0 and "ref_logprobs" in batch:
        kl = kl_per_token(
            zero_padding(new_logprobs, mask),
            zero_padding(batch["ref_logprobs"], mask),
            params.kl_estimator,
            params.kl_clamp,
        )
        per_token = per_token + params.kl_coef * kl
        metrics["kl"] = float(masked_sum(kl.detach(), mask, dim=1).mean())
        metrics["kl_token_mean"] = float(masked_mean(kl.detach(), mask))
    loss = aggregate(per_token, mask, params.loss_aggregation)
    return LossOut(loss, metrics)
