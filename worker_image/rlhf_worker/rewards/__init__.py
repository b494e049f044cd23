"""Reward (and cost) functions: the built-in rules and how any ``module:function`` is run.

- ``rules``: the built-in rule-based rewards for the local examples, also importable
  from here, so a job names them ``rewardFunction: rlhf_worker.rewards:vowel_fraction``;
- ``functions``: loading a job's ``module:function`` and scoring samples with it,
  every failure a one-line ``RewardFunctionError``;
- ``verifiers``: answers of math and QA tasks extracted and compared (GSM8K's ``####``,
  ``\boxed{}``, numeric and LaTeX normalisation, exact match, format rewards), with the
  format rewards ``boxed_format`` and ``gsm8k_format`` importable from here.
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
from rlhf_worker.rewards.verifiers import boxed_format, gsm8k_format

__all__ = [
    "TARGET_LENGTH",
    "boxed_format",
    "character_fraction",
    "digit_fraction",
    "echo_overlap",
    "gsm8k_format",
    "length_score",
    "length_target",
    "vowel_fraction",
]
