"""PPO with a learned critic: normalised, clipped rewards; KL penalty in the per-token
reward; GAE; whitened advantages; clipped policy and value losses.

Calls (``CALLS``): actor_gen, ref_inf, reward_inf, critic_inf, then actor_train and
critic_train. Both train calls call ``actor_advantages`` once per iteration on the
same batch (actor_train uses the advantages, critic_train the returns); each keeps
its own ``PpoState``, and since both see the same rewards the two stay identical.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import Tensor

from rlhf_operator.api.algorithm import PpoParams
from rlhf_operator.api.dataflow import calls_for
from rlhf_worker.algorithms.core import (
    EPS,
    Advantages,
    Batch,
    LossOut,
    RunningMoments,
    clip_of,
    gae,
    kl_metrics,
    masked_mean,
    masked_sum,
    masked_whiten,
    need,
    policy_loss,
    reward_kl,
    token_rewards,
    value_loss,
)

NAME = "ppo"
CALLS = calls_for(NAME)
Params = PpoParams


@dataclass
class PpoState:
    """Running reward statistics and the adaptive KL coefficient, kept across iterations
    and saved in checkpoints."""

    rewards: RunningMoments = field(default_factory=RunningMoments)
    kl_coef: float | None = None
    """The adaptive controller's coefficient (None: the job's klCoef, fixed)."""

    def state_dict(self) -> dict[str, float]:
        out = {f"rewards.{k}": v for k, v in self.rewards.state_dict().items()}
        if self.kl_coef is not None:
            out["kl_coef"] = self.kl_coef
        return out

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.rewards.load_state_dict(
            {k.removeprefix("rewards."): v for k, v in state.items() if k.startswith("rewards.")}
        )
        if "kl_coef" in state:
            self.kl_coef = float(state["kl_coef"])


def new_state(params: PpoParams) -> PpoState:
    return PpoState(kl_coef=params.kl_coef if params.kl_target is not None else None)


def adapted_kl_coef(coef: float, kl: float, target: float, samples: int, horizon: int) -> float:
    """Ziegler et al.'s adaptive KL controller: the coefficient moves by the clipped
    proportional error of the batch's KL to its target, scaled by samples / horizon."""
    error = max(-0.2, min(0.2, kl / target - 1.0))
    return coef * (1.0 + error * samples / horizon)


def normalized_rewards(rewards: Tensor, params: PpoParams, stats: RunningMoments) -> Tensor:
    """Scale rewards by running statistics (this batch included), then clip them.

    Subtracting the running mean shifts every episode's return by the same
    constant, which leaves the optimal policy unchanged and keeps the critic's
    targets near zero whatever the reward model's offset.
    """
    rewards = rewards.float()
    if params.normalize_rewards:
        stats.update(rewards)
        rewards = (rewards - stats.mean) / (stats.std + EPS)
    return rewards.clamp(-params.reward_clip, params.reward_clip)


def actor_advantages(
    batch: Batch, params: PpoParams, state: PpoState, samples_per_prompt: int = 1
) -> Advantages:
    """GAE advantages (whitened) and returns from rewards, values and the KL penalty.

    Needs ``mask``, ``rewards`` [B], ``values`` [B, T], ``gen_logprobs`` and, when
    the KL coefficient is positive, ``ref_logprobs``. Updates ``state`` once.
    """
    mask = need(batch, "mask", NAME).float()
    raw = need(batch, "rewards", NAME)
    values = need(batch, "values", NAME).float()
    coef = state.kl_coef if state.kl_coef is not None else params.kl_coef
    kl = reward_kl(batch, coef, params.kl_estimator, params.kl_clamp)
    rewards = normalized_rewards(raw, params, state.rewards)
    per_token = token_rewards(rewards, mask, kl, coef)
    advantages, returns = gae(per_token, values, mask, params.gamma, params.lam)
    metrics = {
        "reward_mean": float(raw.float().mean()),
        "normalized_reward_mean": float(rewards.mean()),
        "advantage_mean": float(masked_mean(advantages, mask)),
        "return_mean": float(masked_mean(returns, mask)),
        "value_mean": float(masked_mean(values, mask)),
        **kl_metrics(kl, mask),
        "kl_coef": coef,
    }
    if params.kl_target is not None and kl is not None:
        # The coefficient the next iteration uses, from this batch's mean sequence KL.
        sequence_kl = float(masked_sum(kl, mask, dim=1).mean())
        samples = int(mask.shape[0])
        state.kl_coef = adapted_kl_coef(
            coef, sequence_kl, params.kl_target, samples, params.kl_horizon
        )
    return Advantages(masked_whiten(advantages, mask), returns, metrics)


def actor_loss(
    new_logprobs: Tensor,
    batch: Batch,
    advantages: Tensor,
    params: PpoParams,
    entropy: Tensor | None = None,
) -> LossOut:
    """Clipped policy loss against the rollout's log-probabilities, minus an entropy bonus.

    ``entropy`` ([B, T], e.g. ``core.entropy(logits)``) is needed only when
    ``entropy_coef`` is positive.
    """
    mask = need(batch, "mask", NAME).float()
    out = policy_loss(
        new_logprobs, need(batch, "gen_logprobs", NAME), advantages, mask, clip_of(params)
    )
    return with_entropy_bonus(out, entropy, mask, params.entropy_coef)


def with_entropy_bonus(out: LossOut, entropy: Tensor | None, mask: Tensor, coef: float) -> LossOut:
    if coef == 0.0:
        return out
    if entropy is None:
        raise ValueError("entropy_coef is positive but actor_loss was given no entropy")
    mean_entropy = masked_mean(entropy, mask)
    return LossOut(out.loss - coef * mean_entropy, {**out.metrics, "entropy": float(mean_entropy)})


def critic_loss(new_values: Tensor, batch: Batch, returns: Tensor, params: PpoParams) -> LossOut:
    """Clipped value loss around the values the critic predicted during the rollout."""
    mask = need(batch, "mask", NAME).float()
    old_values = need(batch, "values", NAME).float()
    return value_loss(new_values, old_values, returns, mask, params.value_clip_ratio)
