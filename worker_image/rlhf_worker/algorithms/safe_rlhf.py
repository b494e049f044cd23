"""Safe-RLHF (PPO-Lagrangian): maximise reward subject to expected cost <= cost_limit.

Calls (``CALLS``): as PPO plus cost_inf; the critic has two value outputs
(``values[..., 0]`` the reward value, ``values[..., 1]`` the cost value, see
``sharding.ModelShape.num_values``). Reward and cost get their own GAE; the actor
follows ``(A_r - lambda * A_c) / (1 + lambda)``. The multiplier lambda does
projected gradient ascent on ``mean episode cost - cost_limit``, clamped to
``[0, lagrangian_max]``, before the advantages are combined (as in Safe-RLHF).

The KL penalty enters both streams, with opposite signs (``-kl_coef * kl`` in the
reward, ``+kl_coef * kl`` in the cost), so that in the combined advantage its
weight is exactly ``kl_coef`` whatever lambda is. Costs are not normalised: the
constraint is stated in the cost model's own units.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from rlhf_operator.api.algorithm import SafeRlhfParams
from rlhf_operator.api.dataflow import calls_for
from rlhf_worker.algorithms.core import (
    Advantages,
    Batch,
    LossOut,
    RunningMoments,
    gae,
    kl_metrics,
    masked_mean,
    need,
    policy_loss,
    reward_kl,
    token_rewards,
    value_loss,
)
from rlhf_worker.algorithms.ppo import normalized_rewards, with_entropy_bonus

NAME = "safe-rlhf"
CALLS = calls_for(NAME)
Params = SafeRlhfParams
REWARD, COST = 0, 1  # indices of the critic's two value outputs


@dataclass
class SafeRlhfState:
    """Running reward statistics and the Lagrange multiplier, saved in checkpoints."""

    lagrange: float
    rewards: RunningMoments = field(default_factory=RunningMoments)

    def state_dict(self) -> dict[str, float]:
        state = {f"rewards.{k}": v for k, v in self.rewards.state_dict().items()}
        return {**state, "lagrange": self.lagrange}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.lagrange = float(state["lagrange"])
        self.rewards.load_state_dict(
            {k.removeprefix("rewards."): v for k, v in state.items() if k.startswith("rewards.")}
        )


def new_state(params: SafeRlhfParams) -> SafeRlhfState:
    return SafeRlhfState(lagrange=params.lagrangian_init)


def update_lagrange(lagrange: float, mean_cost: float, params: SafeRlhfParams) -> float:
    """One projected ascent step: lambda grows while the constraint is violated."""
    step = lagrange + params.lagrangian_lr * (mean_cost - params.cost_limit)
    return min(max(step, 0.0), params.lagrangian_max)


def combine(reward_adv: Tensor, cost_adv: Tensor, lagrange: float) -> Tensor:
    """The actor's advantage: (A_r - lambda A_c) / (1 + lambda)."""
    return (reward_adv - lagrange * cost_adv) / (1.0 + lagrange)


def actor_advantages(
    batch: Batch, params: SafeRlhfParams, state: SafeRlhfState, samples_per_prompt: int = 1
) -> Advantages:
    """Combined advantages and ``returns`` [B, T, 2] (reward, cost) for the critic.

    Needs ``mask``, ``rewards`` [B], ``costs`` [B], ``values`` [B, T, 2],
    ``gen_logprobs`` and (KL on) ``ref_logprobs``. Updates ``state`` once.
    """
    mask = need(batch, "mask", NAME).float()
    raw_rewards = need(batch, "rewards", NAME)
    costs = need(batch, "costs", NAME).float()
    values = need(batch, "values", NAME).float()
    if values.dim() != 3 or values.shape[-1] != 2:
        raise ValueError(
            f"{NAME}: values must be [B, T, 2] (reward value, cost value), got {list(values.shape)}"
        )
    mean_cost = float(costs.mean())
    state.lagrange = update_lagrange(state.lagrange, mean_cost, params)
    kl = reward_kl(batch, params.kl_coef, params.kl_estimator, params.kl_clamp)
    rewards = normalized_rewards(raw_rewards, params, state.rewards)
    clipped_costs = costs.clamp(-params.reward_clip, params.reward_clip)
    reward_tokens = token_rewards(rewards, mask, kl, params.kl_coef)
    cost_tokens = token_rewards(clipped_costs, mask, kl, -params.kl_coef)
    reward_adv, reward_ret = gae(reward_tokens, values[..., REWARD], mask, params.gamma, params.lam)
    cost_adv, cost_ret = gae(cost_tokens, values[..., COST], mask, params.gamma, params.lam)
    advantages = combine(reward_adv, cost_adv, state.lagrange) * mask
    metrics = {
        "reward_mean": float(raw_rewards.float().mean()),
        "cost_mean": mean_cost,
        "lagrange": state.lagrange,
        "reward_advantage_mean": float(masked_mean(reward_adv, mask)),
        "cost_advantage_mean": float(masked_mean(cost_adv, mask)),
        **kl_metrics(kl, mask),
    }
    return Advantages(advantages, torch.stack([reward_ret, cost_ret], dim=-1), metrics)


def actor_loss(
    new_logprobs: Tensor,
    batch: Batch,
    advantages: Tensor,
    params: SafeRlhfParams,
    entropy: Tensor | None = None,
) -> LossOut:
    """Clipped policy loss on the combined advantage, minus an optional entropy bonus."""
    mask = need(batch, "mask", NAME).float()
    gen_logprobs = need(batch, "gen_logprobs", NAME)
    out = policy_loss(new_logprobs, gen_logprobs, advantages, mask, params.clip_ratio)
    return with_entropy_bonus(out, entropy, mask, params.entropy_coef)


def critic_loss(
    new_values: Tensor, batch: Batch, returns: Tensor, params: SafeRlhfParams
) -> LossOut:
    """Sum of the clipped value losses of the reward head and the cost head."""
    mask = need(batch, "mask", NAME).float()
    old_values = need(batch, "values", NAME).float()
    reward = value_loss(
        new_values[..., REWARD],
        old_values[..., REWARD],
        returns[..., REWARD],
        mask,
        params.value_clip_ratio,
    )
    cost = value_loss(
        new_values[..., COST],
        old_values[..., COST],
        returns[..., COST],
        mask,
        params.value_clip_ratio,
    )
    metrics = {
        "reward_value_loss": float(reward.loss.detach()),
        "cost_value_loss": float(cost.loss.detach()),
        "value_clipfrac": 0.5 * (reward.metrics["value_clipfrac"] + cost.metrics["value_clipfrac"]),
    }
    return LossOut(reward.loss + cost.loss, metrics)
