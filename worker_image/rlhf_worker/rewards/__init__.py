"""Reward (and cost) functions: the built-in rules and how any ``module:function`` is run.

- ``rules``: the built-in rule-based rewards for the local examples, also importable
  from here, so a job names them ``rewardFunction: rlhf_worker.rewards:vowel_fraction``;
- ``functions``: loading a job's ``module:function`` and scoring samples with it,
  every failure a one-line ``RewardFunctionError``.
"""

from rlhf_worker.rewards.rules import (
    TARGET_LENGTH,
    character_fraction,
    digit_fraction,
    echo_overlap,
    length_score,
    length_target,
    vowel_fraction,
)

__all__ = [
    "TARGET_LENGTH",
    "character_fraction",
    "digit_fraction",
    "echo_overlap",
    "length_score",
    "length_target",
    "vowel_fraction",
]
