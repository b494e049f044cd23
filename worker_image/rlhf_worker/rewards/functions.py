"""Reward (and cost) functions given as ``module:function`` over (prompt, response) text.

``load_reward_function(spec)`` imports the function; ``score(fn, prompts,
responses)`` applies it to every sample. Every problem, whether the module does
not import, the attribute is missing or not callable, the function raises, or it
returns something that is not a finite number, is a ``RewardFunctionError``
whose message is one line naming the function (and the sample's index), so the
main job can fail the iteration cleanly with it.
"""

from __future__ import annotations

import importlib
import math
import numbers
import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from rlhf_operator.api.models import REWARD_FUNCTION_PATTERN

RewardFunction = Callable[[str, str], Any]


class RewardFunctionError(ValueError):
    """A reward function that cannot be loaded or that failed on a sample; one line."""


def _one_line(err: BaseException) -> str:
    text = str(err).strip()
    first = text.splitlines()[0] if text else ""
    return f"{type(err).__name__}: {first}" if first else type(err).__name__


def load_reward_function(
    spec: str, search_path: Sequence[str | Path] = ()
) -> Callable[[str, str], Any]:
    """Import ``module:function``; ``search_path`` entries are tried before ``sys.path``.

    In local mode the job file's directory is a natural ``search_path``, so a
    ``my_rewards.py`` next to the job file can be named ``my_rewards:score``.
    """
    if not re.match(REWARD_FUNCTION_PATTERN, spec):
        raise RewardFunctionError(
            f"reward function {spec!r}: must be module:function, e.g. my_rewards.math:score"
        )
    module_name, attribute = spec.split(":")
    for entry in reversed([str(p) for p in search_path]):
        if entry not in sys.path:
            sys.path.insert(0, entry)
    try:
        module = importlib.import_module(module_name)
    except Exception as err:  # an import runs arbitrary code: any error means "unusable"
        raise RewardFunctionError(
            f"reward function {spec}: cannot import module {module_name!r}: {_one_line(err)}"
        ) from None
    if not hasattr(module, attribute):
        raise RewardFunctionError(
            f"reward function {spec}: module {module_name!r} has no attribute {attribute!r}"
        )
    fn = getattr(module, attribute)
    if not callable(fn):
        raise RewardFunctionError(
            f"reward function {spec}: {module_name}.{attribute} is a "
            f"{type(fn).__name__}, not callable"
        )
    return fn


def function_name(fn: Callable[..., Any]) -> str:
    """``module:qualname`` of a function, as a user would write it in the job file."""
    module = getattr(fn, "__module__", None) or "?"
    name = getattr(fn, "__qualname__", None) or type(fn).__name__
    return f"{module}:{name}"


def as_reward(value: Any) -> float | None:
    """The value as a finite float, or None if it is not a finite real number.

    Accepts Python and numpy numbers, bools (a pass/fail reward) and 0-d
    tensors; rejects strings, None, sequences, nan and inf.
    """
    if isinstance(value, str | bytes) or value is None:
        return None
    if not isinstance(value, numbers.Real) and not hasattr(type(value), "__float__"):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError, RuntimeError):  # e.g. a tensor with several elements
        return None
    return number if math.isfinite(number) else None


def score(
    fn: Callable[[str, str], Any],
    prompts: Sequence[str],
    responses: Sequence[str],
    name: str | None = None,
) -> list[float]:
    """``fn(prompt, response)`` for every sample, as floats.

    ``name`` (default: the function's ``module:qualname``) is what error
    messages call the function; pass the job's ``rewardFunction`` string.
    """
    name = name or function_name(fn)
    if len(prompts) != len(responses):
        raise RewardFunctionError(
            f"reward function {name}: {len(prompts)} prompts but {len(responses)} responses"
        )
    rewards = []
    for index, (prompt, response) in enumerate(zip(prompts, responses, strict=True)):
        try:
            value = fn(prompt, response)
        except Exception as err:
            raise RewardFunctionError(
                f"reward function {name} raised on sample {index}: {_one_line(err)}"
            ) from None
        reward = as_reward(value)
        if reward is None:
            shown = " ".join(repr(value).split())  # one line, even for an array's repr
            shown = shown if len(shown) <= 60 else shown[:57] + "..."
            raise RewardFunctionError(
                f"reward function {name} returned {shown} ({type(value).__name__}) on sample "
                f"{index}: expected a finite number"
            )
        rewards.append(reward)
    return rewards
