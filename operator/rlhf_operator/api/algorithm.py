"""Algorithm choice and each algorithm's typed hyper-parameters.

`algorithm.name` picks the algorithm; the block of the same name (optional,
every field defaulted) holds its hyper-parameters. A block for another
algorithm is an error, so a stale block never looks as if it applied.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import ConfigDict, Field

from .base import ApiModel, cel_rules

AlgorithmName = Literal["ppo", "grpo", "remax", "rloo", "safe-rlhf"]
KlEstimator = Literal["k1", "k2", "k3"]
# token-mean: over all response tokens of the minibatch; seq-mean-token-mean (also
# "sequence-mean"): per sequence over its tokens, then over sequences; seq-mean-token-sum-norm
# (Dr. GRPO): per sequence its tokens' sum over the response budget, then over sequences.
LossAggregation = Literal[
    "token-mean", "sequence-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm"
]

Ratio = Annotated[float, Field(gt=0, le=10)]
NonNegative = Annotated[float, Field(ge=0, le=1000)]
Unit = Annotated[float, Field(ge=0, le=1)]


class KlSettings(ApiModel):
    """KL regularisation towards the reference policy, shared by every algorithm."""

    kl_coef: NonNegative = 0.05
    """Weight of the KL term. 0 disables it, and then the ref role may be left out."""
    kl_estimator: KlEstimator = "k1"
    """Per-token KL estimator (Schulman's k1 = log-ratio, k2 = half squared log-ratio, k3 = unbiased low-variance)."""
    kl_clamp: Annotated[float | None, Field(gt=0, le=1000)] = None
    """Clamp each token's KL estimate to [-klClamp, klClamp] (k3 grows exponentially where the reference is far likelier than the policy; verl clamps it at 10). Off by default."""


class ClipSettings(ApiModel):
    """How the policy ratio is clipped (PPO's epsilon, DAPO's clip-higher, dual-clip)."""

    clip_ratio: Ratio = 0.2
    """Policy ratio clipping epsilon."""
    clip_low: Annotated[float | None, Field(gt=0, lt=1)] = None
    """Lower clipping epsilon: the ratio is kept above 1 - clipLow (default clipRatio)."""
    clip_high: Annotated[float | None, Field(gt=0, le=10)] = None
    """Upper clipping epsilon: the ratio is kept below 1 + clipHigh (default clipRatio; DAPO's clip-higher uses 0.28 with clipLow 0.2)."""
    dual_clip: Annotated[float | None, Field(gt=1, le=100)] = None
    """PPO dual-clip constant c: the loss of a token with a negative advantage A is at most -c*A (e.g. 3; off by default)."""


class PpoParams(KlSettings, ClipSettings):
    """PPO with a learned critic and GAE."""

    value_clip_ratio: Ratio = 0.2
    """Value prediction clipping around the old values."""
    gamma: Unit = 1.0
    """GAE discount."""
    lam: Unit = 0.95
    """GAE lambda."""
    normalize_rewards: bool = True
    """Normalise rewards by running statistics before computing advantages."""
    reward_clip: Annotated[float, Field(gt=0, le=1000)] = 10.0
    """Clip (normalised) rewards to [-rewardClip, rewardClip]."""
    entropy_coef: NonNegative = 0.0
    """Entropy bonus weight."""
    kl_target: Annotated[float | None, Field(gt=0, le=1000)] = None
    """Adaptive KL (Ziegler et al. 2019): the per-sequence KL to aim for; klCoef (> 0) is then the starting coefficient, moved each iteration by the clipped error (at most 20%) times samples / klHorizon. Off by default."""
    kl_horizon: Annotated[int, Field(ge=1, le=100_000_000)] = 10_000
    """Samples over which the adaptive KL coefficient moves by its full error."""


class GrpoParams(KlSettings, ClipSettings):
    """GRPO: group-normalised advantages, no critic; the KL term goes into the loss."""

    kl_coef: NonNegative = 0.04
    """Weight of the KL term in the loss."""
    kl_estimator: KlEstimator = "k3"
    """Per-token KL estimator."""
    group_size: Annotated[int, Field(ge=2, le=1024)] = 8
    """Responses sampled per prompt; advantages are normalised within each group."""
    normalize_std: bool = True
    """Divide group-centred rewards by the group's standard deviation (false gives Dr. GRPO)."""
    overlong_buffer: Annotated[int | None, Field(ge=1, le=1_000_000)] = None
    """DAPO's soft overlong punishment: a response within this many tokens of rollout.maxNewTokens loses up to overlongPenalty of its reward, linearly (off by default)."""
    overlong_penalty: Annotated[float, Field(ge=0, le=1000)] = 1.0
    """The reward lost by a response that reaches rollout.maxNewTokens (with overlongBuffer)."""
    loss_aggregation: LossAggregation = "token-mean"
    """How per-token losses are averaged: token-mean; seq-mean-token-mean (sequence-mean) per sequence, then over sequences; seq-mean-token-sum-norm (Dr. GRPO) each sequence's sum over the response budget (rollout.maxNewTokens), then over sequences. Exact over micro-batches and data-parallel replicas."""


class RemaxParams(KlSettings):
    """ReMax: REINFORCE with the reward of a greedy rollout as baseline."""

    kl_coef: NonNegative = 0.1
    """Weight of the KL penalty in the reward."""
    clip_ratio: Ratio = 0.2
    """Policy ratio clipping epsilon (matters when ppoEpochs > 1)."""


class RlooParams(KlSettings):
    """RLOO: REINFORCE with the leave-one-out mean of the group as baseline."""

    kl_coef: NonNegative = 0.1
    """Weight of the KL penalty in the reward."""
    group_size: Annotated[int, Field(ge=2, le=1024)] = 4
    """Responses sampled per prompt."""
    clip_ratio: Ratio = 0.2
    """Policy ratio clipping epsilon."""


class SafeRlhfParams(PpoParams):
    """Safe-RLHF: PPO on reward minus a Lagrange multiplier times cost, with the multiplier learned."""

    cost_limit: Annotated[float, Field(ge=-1000, le=1000)] = 0.0
    """The constraint: the expected cost must stay below this."""
    lagrangian_init: NonNegative = 1.0
    """Initial value of the Lagrange multiplier."""
    lagrangian_lr: Annotated[float, Field(gt=0, le=10)] = 0.01
    """Learning rate of the Lagrange multiplier."""
    lagrangian_max: Annotated[float, Field(gt=0, le=1e6)] = 100.0
    """Upper bound of the Lagrange multiplier."""


AlgorithmParams = PpoParams | GrpoParams | RemaxParams | RlooParams | SafeRlhfParams

# The field of `Algorithm` that holds each algorithm's parameters, and its type.
PARAM_BLOCKS: dict[str, tuple[str, type[AlgorithmParams]]] = {
    "ppo": ("ppo", PpoParams),
    "grpo": ("grpo", GrpoParams),
    "remax": ("remax", RemaxParams),
    "rloo": ("rloo", RlooParams),
    "safe-rlhf": ("safe_rlhf", SafeRlhfParams),
}


def _only_matching_block() -> dict[str, Any]:
    rules = []
    for name, (field, _) in PARAM_BLOCKS.items():
        alias = "safeRlhf" if field == "safe_rlhf" else field
        rules.append(
            (
                f"!has(self.{alias}) || self.name == '{name}'",
                f"{alias} parameters are only allowed when name is {name}",
            )
        )
    return cel_rules(*rules)


class Algorithm(ApiModel):
    """Which RLHF algorithm runs, and its hyper-parameters."""

    model_config = ConfigDict(json_schema_extra=_only_matching_block())

    name: AlgorithmName = "ppo"
    """The algorithm."""
    ppo: PpoParams | None = None
    """Hyper-parameters when name is ppo."""
    grpo: GrpoParams | None = None
    """Hyper-parameters when name is grpo."""
    remax: RemaxParams | None = None
    """Hyper-parameters when name is remax."""
    rloo: RlooParams | None = None
    """Hyper-parameters when name is rloo."""
    safe_rlhf: SafeRlhfParams | None = None
    """Hyper-parameters when name is safe-rlhf."""

    def params(self) -> AlgorithmParams:
        """The chosen algorithm's parameters, defaulted when its block is absent."""
        field, cls = PARAM_BLOCKS[self.name]
        block = getattr(self, field)
        return block if block is not None else cls()

    @property
    def group_size(self) -> int | None:
        """Samples per prompt the algorithm itself requires (GRPO, RLOO), else None."""
        params = self.params()
        return getattr(params, "group_size", None)
