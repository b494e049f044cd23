"""Rule-based reward functions, usable as `rewardFunction: rlhf_worker.rewards:NAME`.

A reward function takes the prompt and the response text and returns a float.
These are the built-in ones for the local examples: simple enough that a tiny
random-initialised model can visibly learn them within minutes on a CPU:

- ``vowel_fraction``: fraction of letters that are vowels;
- ``echo_overlap``: fraction of words that also occur in the prompt;
- ``digit_fraction``: fraction of non-space characters that are digits;
- ``length_target``: closeness to ``TARGET_LENGTH`` characters.

All return a float in [0, 1]. Any ``module:function`` with this signature can be
used the same way (see ``rlhf_worker.rewards.functions``).
"""

from __future__ import annotations


def vowel_fraction(prompt: str, response: str) -> float:
    """Fraction of the response's letters that are vowels (0 for an empty response)."""
    letters = [ch for ch in response.lower() if ch.isalpha()]
    if not letters:
        return 0.0
    return sum(ch in "aeiou" for ch in letters) / len(letters)


def echo_overlap(prompt: str, response: str) -> float:
    """Fraction of the response's words that also occur in the prompt."""
    words = response.split()
    if not words:
        return 0.0
    vocabulary = set(prompt.split())
    return sum(word in vocabulary for word in words) / len(words)


def character_fraction(response: str, allowed: str) -> float:
    """Fraction of the response's non-space characters that are in ``allowed`` (0 if none)."""
    chars = [ch for ch in response if not ch.isspace()]
    if not chars:
        return 0.0
    return sum(ch in allowed for ch in chars) / len(chars)


def digit_fraction(prompt: str, response: str) -> float:
    """Fraction of the response's non-space characters that are digits 0-9.

    The tiny tokenizer has single-digit tokens and a few number merges, so a
    policy only has to shift probability mass onto a handful of token ids:
    a random-initialised model starts near 0 and climbs within a few dozen
    iterations, a clear learning signal in little time.
    """
    return character_fraction(response, "0123456789")


TARGET_LENGTH = 24
"""The response length, in characters (spaces included), that ``length_target`` rewards."""


def length_score(response: str, target: int) -> float:
    """1 at exactly ``target`` characters, falling linearly to 0 at 0 or 2 * ``target``."""
    return max(0.0, 1.0 - abs(len(response) - target) / target)


def length_target(prompt: str, response: str) -> float:
    """How close the response is to ``TARGET_LENGTH`` characters (1 exactly there).

    A random model writes until ``max_new_tokens`` (tens of characters with the
    tiny tokenizer); learning to stop near the target is one decision, when to
    emit the end-of-sequence token, so the reward rises quickly. Set
    ``rollout.maxNewTokens`` so that full-length responses overshoot the target.
    """
    return length_score(response, TARGET_LENGTH)
