"""Rule-based reward functions, usable as `rewardFunction: rlhf_worker.rewards:NAME`.

A reward function takes the prompt and the response text and returns a float.
These are the built-in ones for the local examples: simple enough that a tiny
random-initialised model can visibly learn them within minutes on a CPU.
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
