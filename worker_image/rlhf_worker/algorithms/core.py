"""Shared per-token math of the RLHF algorithms: masked reductions, KL estimators,
GAE, clipped policy and value losses, entropy. Pure torch functions.

Shapes follow the package conventions (see ``rlhf_worker.algorithms``): per-token
tensors are ``[B, T]`` over response tokens, right-padded, with a float ``mask``
that is 1 on real tokens and 0 on padding.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple

import torch
from torch import Tensor

from rlhf_operator.api.algorithm import LossAggregation  # the job's choices: one definition

KlEstimator = Literal["k1", "k2", "k3"]

# Keeps divisions finite when a group or a batch has zero variance.
EPS = 1e-8


# ---------------------------------------------------------------- reductions


def zero_padding(x: Tensor, mask: Tensor) -> Tensor:
    """``x`` with padding set to 0, by selection: inf or nan there cannot leak.

    Multiplying by the mask would not do: inf * 0 is nan, and a gradient through
    an inf value is nan even where the loss ignores it. Every function here
    clears padding this way before using a per-token input.
    """
    while mask.dim() < x.dim():
        mask = mask.unsqueeze(-1)
    return torch.where(mask > 0, x, torch.zeros_like(x))


def masked_sum(x: Tensor, mask: Tensor, dim: int | None = None) -> Tensor:
    """Sum of ``x`` where ``mask`` is 1 (over everything, or along ``dim``).

    Padding is selected away rather than multiplied by 0, so an inf or nan there
    (e.g. a log-probability of a pad token) cannot turn the sum into nan.
    """
    masked = zero_padding(x, mask) * mask
    return masked.sum() if dim is None else masked.sum(dim)


def masked_mean(x: Tensor, mask: Tensor, dim: int | None = None) -> Tensor:
    """Mean of ``x`` over masked-in positions; 0 where nothing is masked in."""
    count = mask.sum() if dim is None else mask.sum(dim)
    return masked_sum(x, mask, dim) / count.clamp(min=1.0)


def masked_var(x: Tensor, mask: Tensor, unbiased: bool = True) -> Tensor:
    """Variance of ``x`` over all masked-in positions."""
    x = zero_padding(x, mask)
    mean = masked_mean(x, mask)
    count = mask.sum()
    sq = masked_sum((x - mean) ** 2, mask)
    if unbiased:
        # A single token has no spread; dividing by zero would give inf/nan.
        return sq / (count - 1).clamp(min=1.0)
    return sq / count.clamp(min=1.0)


def masked_whiten(x: Tensor, mask: Tensor, shift_mean: bool = True) -> Tensor:
    """Normalise ``x`` to unit variance (and zero mean) over masked-in positions.

    Padding comes out as 0 so it can never leak into a later sum.
    """
    x = zero_padding(x, mask)
    mean = masked_mean(x, mask)
    std = masked_var(x, mask).sqrt()
    out = (x - mean) / (std + EPS)
    if not shift_mean:
        out = out + mean
    return zero_padding(out, mask)


# ---------------------------------------------------------------- KL estimators


def kl_per_token(
    logprobs: Tensor, ref_logprobs: Tensor, estimator: KlEstimator, clamp: float | None = None
) -> Tensor:
    """Per-token estimate of KL(pi || pi_ref) from log-probabilities of tokens sampled from pi.

    With ``d = log pi(x) - log pi_ref(x)`` (Schulman's notation, r = pi_ref/pi = exp(-d)):
    k1 = d (unbiased, high variance, can be negative); k2 = d^2/2 (biased, low variance);
    k3 = r - 1 - log r = exp(-d) - 1 + d (unbiased and always >= 0). `clamp` bounds the
    estimate to [-clamp, clamp] (the job's klClamp).
    """
    kl = _kl_estimate(logprobs - ref_logprobs, estimator)
    return kl if clamp is None else kl.clamp(-clamp, clamp)


def _kl_estimate(d: Tensor, estimator: KlEstimator) -> Tensor:
    if estimator == "k1":
        return d
    if estimator == "k2":
        return 0.5 * d * d
    if estimator == "k3":
        # Clamp the exponent: a token the reference finds far likelier than the
        # policy would otherwise overflow and poison the whole batch with inf.
        return torch.exp((-d).clamp(max=20.0)) - 1.0 + d
    raise ValueError(f"unknown KL estimator {estimator!r}: expected k1, k2 or k3")


# ---------------------------------------------------------------- rewards and advantages


def last_token_index(mask: Tensor) -> Tensor:
    """Index of each row's last response token ([B], long); 0 for an empty response."""
    lengths = mask.sum(dim=1).long()
    return (lengths - 1).clamp(min=0)


def place_on_last_token(seq_values: Tensor, mask: Tensor) -> Tensor:
    """A ``[B, T]`` tensor holding ``seq_values[b]`` at row b's last response token."""
    out = torch.zeros_like(mask, dtype=seq_values.dtype)
    rows = torch.arange(mask.shape[0], device=mask.device)
    # A response with no token gets no reward at all rather than one on padding.
    out[rows, last_token_index(mask)] = seq_values * (mask.sum(dim=1) > 0).to(seq_values.dtype)
    return out


def token_rewards(
    seq_rewards: Tensor, mask: Tensor, kl: Tensor | None = None, kl_coef: float = 0.0
) -> Tensor:
    """Per-token reward: ``-kl_coef * kl`` on every token plus the sequence reward on the last."""
    rewards = place_on_last_token(seq_rewards, mask)
    if kl is not None and kl_coef != 0.0:
        rewards = rewards - kl_coef * zero_padding(kl, mask)
    return zero_padding(rewards, mask)


def gae(
    rewards: Tensor, values: Tensor, mask: Tensor, gamma: float, lam: float
) -> tuple[Tensor, Tensor]:
    """Generalised advantage estimation over response tokens.

    ``values[b, t]`` is the critic's estimate before response token t is produced.
    The state after the last token is terminal (value 0); a truncated response is
    treated the same way (there is nothing to bootstrap from). Padding holds zero
    reward and value so nothing flows back through it. Returns (advantages,
    returns), both zero on padding; returns = advantages + values.
    """
    rewards = zero_padding(rewards, mask)
    values = zero_padding(values, mask)
    batch, length = rewards.shape
    advantages = torch.zeros_like(rewards)
    running = torch.zeros(batch, dtype=rewards.dtype, device=rewards.device)
    next_value = torch.zeros(batch, dtype=rewards.dtype, device=rewards.device)
    for t in reversed(range(length)):
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        running = delta + gamma * lam * running
        # On padding (right of the response) everything is 0, so `running`
        # stays 0 until the last real token is reached.
        running = running * mask[:, t]
        advantages[:, t] = running
        next_value = values[:, t]
    return advantages, (advantages + values) * mask


def returns_to_go(rewards: Tensor, mask: Tensor) -> Tensor:
    """Undiscounted reward-to-go at each response token (reverse cumulative sum)."""
    return zero_padding(zero_padding(rewards, mask).flip(1).cumsum(1).flip(1), mask)


def group_view(seq: Tensor, samples_per_prompt: int, what: str = "batch") -> Tensor:
    """``[B]`` -> ``[B / n, n]``: samples of the same prompt are consecutive."""
    if samples_per_prompt < 1 or seq.shape[0] % samples_per_prompt != 0:
        raise ValueError(
            f"{what} of {seq.shape[0]} samples is not a whole number of groups "
            f"of {samples_per_prompt} samples per prompt"
        )
    return seq.view(-1, samples_per_prompt)


# ---------------------------------------------------------------- losses


def aggregate(loss: Tensor, mask: Tensor, how: LossAggregation) -> Tensor:
    """Average a per-token loss [B, T]: over all tokens, or per sequence then over
    sequences (each sequence's mean, or Dr. GRPO's sum over the budget T = loss.shape[1],
    the same constant for every sequence)."""
    if how == "token-mean":
        return masked_mean(loss, mask)
    if how in ("sequence-mean", "seq-mean-token-mean"):
        return masked_mean(loss, mask, dim=1).mean()
    if how == "seq-mean-token-sum-norm":
        return (masked_sum(loss, mask, dim=1) / loss.shape[1]).mean()
    raise ValueError(
        f"unknown loss aggregation {how!r}: expected token-mean, seq-mean-token-mean or "
        "seq-mean-token-sum-norm"
    )


def micro_batch_weight(
    mask: Tensor, minibatch_tokens: float, minibatch_rows: int, how: LossAggregation
) -> float:
    """What a micro-batch's aggregated loss is multiplied by so that the sum over the
    minibatch's micro-batches and data-parallel replicas is the minibatch's aggregate:
    its share of the minibatch's tokens for token-mean, of its sequences otherwise."""
    if how == "token-mean":
        return float(mask.sum()) / minibatch_tokens
    return mask.shape[0] / minibatch_rows


class LossOut(NamedTuple):
    loss: Tensor
    metrics: dict[str, float]


class Clip(NamedTuple):
    """How the policy ratio is clipped: [1 - low, 1 + high] (DAPO's clip-higher when high >
    low), and PPO dual-clip's bound c on the loss of a negative advantage (None: off)."""

    low: float
    high: float
    dual: float | None = None

    @classmethod
    def of(
        cls,
        ratio: float,
        low: float | None = None,
        high: float | None = None,
        dual: float | None = None,
    ) -> Clip:
        return cls(ratio if low is None else low, ratio if high is None else high, dual)


def clip_of(params: Any) -> Clip:
    """The clip settings of an algorithm's parameters (`api.algorithm.ClipSettings`)."""
    return Clip.of(params.clip_ratio, params.clip_low, params.clip_high, params.dual_clip)


def clipped_surrogate(
    new_logprobs: Tensor,
    old_logprobs: Tensor,
    advantages: Tensor,
    mask: Tensor,
    clip: float | Clip,
) -> tuple[Tensor, Tensor]:
    """Per-token PPO surrogate loss max(-A r, -A clip(r, 1-low, 1+high)), r = pi/pi_old;
    with dual-clip, min(that, -c A) where A < 0 (Ye et al. 2020: a token whose ratio
    ran far above 1 under a negative advantage cannot dominate the loss).

    Also returns where a clipped branch is strictly the one taken (its gradient is then
    zero); at exactly r = 1 +- eps both branches agree and the token counts as unclipped.
    """
    bounds = clip if isinstance(clip, Clip) else Clip(clip, clip)
    # Padding may hold anything; select it away before exp so neither the value
    # nor the gradient can become inf/nan there.
    log_ratio = zero_padding(new_logprobs, mask) - zero_padding(old_logprobs, mask)
    ratio = torch.exp(log_ratio)
    advantages = zero_padding(advantages, mask)
    unclipped = -advantages * ratio
    clipped = -advantages * ratio.clamp(1.0 - bounds.low, 1.0 + bounds.high)
    loss = torch.maximum(unclipped, clipped)
    was_clipped = clipped > unclipped
    if bounds.dual is not None:
        bound = -advantages * bounds.dual
        dual = (advantages < 0) & (loss > bound)
        loss = torch.where(dual, bound, loss)
        was_clipped = was_clipped | dual
    return loss, was_clipped & (mask > 0)


def policy_metrics(
    new_logprobs: Tensor, old_logprobs: Tensor, was_clipped: Tensor, mask: Tensor
) -> dict[str, float]:
    """Fraction of clipped tokens and the approximate KL between new and old policy."""
    with torch.no_grad():
        log_ratio = zero_padding(new_logprobs - old_logprobs, mask)
        return {
            "clipfrac": float(masked_mean(was_clipped.float(), mask)),
            "approx_kl": float(masked_mean(0.5 * log_ratio**2, mask)),
        }


def policy_loss(
    new_logprobs: Tensor,
    old_logprobs: Tensor,
    advantages: Tensor,
    mask: Tensor,
    clip_ratio: float | Clip,
    aggregation: LossAggregation = "token-mean",
) -> LossOut:
    """PPO's clipped surrogate, aggregated over response tokens (padding ignored)."""
    per_token, was_clipped = clipped_surrogate(
        new_logprobs, old_logprobs, advantages, mask, clip_ratio
    )
    loss = aggregate(per_token, mask, aggregation)
    return LossOut(loss, policy_metrics(new_logprobs, old_logprobs, was_clipped, mask))


def value_loss(
    new_values: Tensor, old_values: Tensor, returns: Tensor, mask: Tensor, clip: float
) -> LossOut:
    """Clipped value loss: 0.5 * max((v - R)^2, (v_old + clip(v - v_old, +-c) - R)^2)."""
    new_values = zero_padding(new_values, mask)
    old_values = zero_padding(old_values, mask)
    returns = zero_padding(returns, mask)
    clipped = old_values + (new_values - old_values).clamp(-clip, clip)
    unclipped_err = (new_values - returns) ** 2
    clipped_err = (clipped - returns) ** 2
    loss = 0.5 * masked_mean(torch.maximum(unclipped_err, clipped_err), mask)
    with torch.no_grad():
        clipfrac = masked_mean((clipped_err > unclipped_err).float(), mask)
    return LossOut(loss, {"value_clipfrac": float(clipfrac)})


def entropy(logits: Tensor) -> Tensor:
    """Entropy of the categorical distribution at each position: ``[..., V]`` -> ``[...]``."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    return -(logp.exp() * logp).sum(dim=-1)


# ---------------------------------------------------------------- state


@dataclass
class RunningMoments:
    """Running mean and variance of every value seen so far (Chan et al.'s parallel update).

    Saved in checkpoints so a resumed job normalises exactly as before.
    """

    count: float = 0.0
    mean: float = 0.0
    m2: float = field(default=0.0)  # sum of squared deviations from the mean

    @property
    def var(self) -> float:
        return self.m2 / (self.count - 1) if self.count > 1 else 1.0

    @property
    def std(self) -> float:
        return self.var**0.5

    def update(self, values: Tensor) -> None:
        flat = values.detach().double().flatten()
        n = float(flat.numel())
        if n == 0:
            return
        batch_mean = float(flat.mean())
        batch_m2 = float(((flat - batch_mean) ** 2).sum())
        total = self.count + n
        delta = batch_mean - self.mean
        self.mean += delta * n / total
        self.m2 += batch_m2 + delta * delta * self.count * n / total
        self.count = total

    def state_dict(self) -> dict[str, float]:
        return {"count": self.count, "mean": self.mean, "m2": self.m2}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.count = float(state["count"])
        self.mean = float(state["mean"])
        self.m2 = float(state["m2"])


@dataclass
class NoState:
    """The state of an algorithm that keeps none between iterations (GRPO, RLOO, ReMax)."""

    def state_dict(self) -> dict[str, float]:
        return {}

    def load_state_dict(self, state: dict[str, float]) -> None:
        if state:
            raise ValueError(f"unexpected algorithm state {sorted(state)}: this algorithm has none")


class Advantages(NamedTuple):
    """What ``actor_advantages`` returns: per-token advantages, returns for a critic, metrics."""

    advantages: Tensor
    returns: Tensor | None
    metrics: dict[str, float]


def kl_metrics(batch_kl: Tensor | None, mask: Tensor) -> dict[str, float]:
    """Mean per-sequence KL (sum over tokens), the figure reported as ``kl``."""
    if batch_kl is None:
        return {"kl": 0.0}
    return {"kl": float(masked_sum(batch_kl, mask, dim=1).mean())}


Batch = Mapping[str, Tensor]


def need(batch: Batch, key: str, algorithm: str) -> Tensor:
    """``batch[key]``, or a one-line error naming the algorithm and the missing input."""
    if key not in batch:
        raise KeyError(f"{algorithm}: the batch has no {key!r} (has {', '.join(sorted(batch))})")
    return batch[key]


def reward_kl(
    batch: Batch, kl_coef: float, estimator: KlEstimator, clamp: float | None = None
) -> Tensor | None:
    """Per-token KL between the sampling policy and the reference, or None without a ref.

    Uses ``gen_logprobs``: the KL penalty in the reward is a fixed part of the
    iteration's rewards, computed once from the rollout, not differentiated.
    """
    if kl_coef == 0.0 or "ref_logprobs" not in batch:
        return None
    mask = need(batch, "mask", "KL penalty")
    gen = zero_padding(need(batch, "gen_logprobs", "KL penalty"), mask)
    return kl_per_token(gen, zero_padding(batch["ref_logprobs"], mask), estimator, clamp)
