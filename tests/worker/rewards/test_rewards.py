"""Loading `module:function` rewards, scoring with clear errors, and the built-in rule rewards."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import numpy
import pytest
import torch

from rlhf_worker import rewards
from rlhf_worker.rewards.functions import (
    RewardFunctionError,
    as_reward,
    function_name,
    load_reward_function,
    score,
)

USER_MODULE = """
import math

def length(prompt, response):
    return len(response)

def raises(prompt, response):
    if response == "bad":
        raise ZeroDivisionError("division by zero\\nsecond line")
    return 1.0

def returns(prompt, response):
    return {"nan": math.nan, "inf": math.inf, "text": "1.0", "none": None,
            "list": [1.0], "ok": 0.5}[response]

NOT_CALLABLE = 3
"""


@pytest.fixture
def user_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    monkeypatch.setattr(sys, "path", list(sys.path))  # the loader may prepend to it
    (tmp_path / "user_rewards_mod.py").write_text(USER_MODULE)
    (tmp_path / "broken_syntax_mod.py").write_text("def f(:\n")
    (tmp_path / "failing_import_mod.py").write_text("import no_such_dependency_xyz\n")
    (tmp_path / "raising_import_mod.py").write_text("raise RuntimeError('config missing')\n")
    yield tmp_path
    for name in (
        "user_rewards_mod",
        "broken_syntax_mod",
        "failing_import_mod",
        "raising_import_mod",
    ):
        sys.modules.pop(name, None)


def load_error(spec: str, user_dir: Path) -> str:
    with pytest.raises(RewardFunctionError) as info:
        load_reward_function(spec, search_path=[user_dir])
    message = str(info.value)
    assert "\n" not in message
    return message


def test_loads_builtin_and_user_functions(user_dir: Path) -> None:
    assert load_reward_function("rlhf_worker.rewards:vowel_fraction") is rewards.vowel_fraction
    fn = load_reward_function("user_rewards_mod:length", search_path=[user_dir])
    assert fn("p", "abc") == 3


def test_load_errors_are_one_line_and_name_the_problem(user_dir: Path) -> None:
    assert load_error("no_colon", user_dir) == (
        "reward function 'no_colon': must be module:function, e.g. my_rewards.math:score"
    )
    assert load_error("no_such_module_abc:f", user_dir) == (
        "reward function no_such_module_abc:f: cannot import module 'no_such_module_abc': "
        "ModuleNotFoundError: No module named 'no_such_module_abc'"
    )
    assert load_error("failing_import_mod:f", user_dir).endswith(
        "cannot import module 'failing_import_mod': "
        "ModuleNotFoundError: No module named 'no_such_dependency_xyz'"
    )
    assert "cannot import module 'broken_syntax_mod': SyntaxError" in load_error(
        "broken_syntax_mod:f", user_dir
    )
    assert load_error("raising_import_mod:f", user_dir).endswith("RuntimeError: config missing")
    assert load_error("user_rewards_mod:missing", user_dir) == (
        "reward function user_rewards_mod:missing: module 'user_rewards_mod' has no attribute "
        "'missing'"
    )
    assert load_error("user_rewards_mod:NOT_CALLABLE", user_dir) == (
        "reward function user_rewards_mod:NOT_CALLABLE: user_rewards_mod.NOT_CALLABLE is a int, "
        "not callable"
    )


def test_score_returns_floats() -> None:
    got = score(rewards.vowel_fraction, ["p", "p"], ["aaa", "xyz"])
    assert got == [1.0, 0.0] and all(type(x) is float for x in got)


def test_score_names_the_function_and_sample_when_it_raises(user_dir: Path) -> None:
    fn = load_reward_function("user_rewards_mod:raises", search_path=[user_dir])
    with pytest.raises(RewardFunctionError) as info:
        score(fn, ["p"] * 3, ["ok", "ok", "bad"], name="user_rewards_mod:raises")
    assert str(info.value) == (
        "reward function user_rewards_mod:raises raised on sample 2: "
        "ZeroDivisionError: division by zero"
    )
    # Without a name, the function's own module:qualname is used.
    with pytest.raises(
        RewardFunctionError, match=r"^reward function user_rewards_mod:raises raised"
    ):
        score(fn, ["p"], ["bad"])


@pytest.mark.parametrize(
    ("response", "shown"),
    [
        ("nan", "nan (float)"),
        ("inf", "inf (float)"),
        ("text", "'1.0' (str)"),
        ("none", "None (NoneType)"),
        ("list", "[1.0] (list)"),
    ],
)
def test_score_rejects_non_finite_or_non_numeric_returns(
    user_dir: Path, response: str, shown: str
) -> None:
    fn = load_reward_function("user_rewards_mod:returns", search_path=[user_dir])
    with pytest.raises(RewardFunctionError) as info:
        score(fn, ["p", "p"], ["ok", response], name="user_rewards_mod:returns")
    assert str(info.value) == (
        f"reward function user_rewards_mod:returns returned {shown} on sample 1: "
        "expected a finite number"
    )


def test_score_checks_lengths() -> None:
    with pytest.raises(RewardFunctionError, match="2 prompts but 1 responses"):
        score(rewards.vowel_fraction, ["a", "b"], ["c"])


def test_as_reward_accepts_numbers_of_every_kind() -> None:
    assert as_reward(1) == 1.0 and as_reward(True) == 1.0
    assert as_reward(numpy.float32(0.5)) == 0.5
    assert as_reward(torch.tensor(0.25)) == 0.25
    assert as_reward(torch.tensor([1.0, 2.0])) is None
    assert as_reward(numpy.array([1.0, 2.0])) is None
    assert as_reward(b"1") is None and as_reward(float("-inf")) is None


def test_function_name() -> None:
    assert function_name(rewards.digit_fraction) == "rlhf_worker.rewards.rules:digit_fraction"


# ---------------------------------------------------------------- built-in rewards


def test_digit_fraction() -> None:
    assert rewards.digit_fraction("p", "12 34") == 1.0
    assert rewards.digit_fraction("p", "a1b2") == 0.5
    assert rewards.digit_fraction("p", "   ") == 0.0
    assert rewards.digit_fraction("p", "") == 0.0
    assert rewards.character_fraction("xxyz", "x") == 0.5


def test_length_target() -> None:
    target = rewards.TARGET_LENGTH
    assert rewards.length_target("p", "x" * target) == 1.0
    assert rewards.length_target("p", "") == 0.0
    assert rewards.length_target("p", "x" * (2 * target)) == 0.0
    assert rewards.length_target("p", "x" * (3 * target)) == 0.0
    assert rewards.length_target("p", "x" * (target // 2)) == pytest.approx(0.5, abs=0.05)
    assert rewards.length_score("abcd", 8) == 0.5


def test_builtin_rewards_are_loadable_and_bounded() -> None:
    samples = ["", "hello world", "0123456789", "a" * 100, "The sky is blue. 42!"]
    for name in ("vowel_fraction", "echo_overlap", "digit_fraction", "length_target"):
        fn = load_reward_function(f"rlhf_worker.rewards:{name}")
        values = score(fn, ["hello there"] * len(samples), samples)
        assert all(0.0 <= v <= 1.0 for v in values), name
