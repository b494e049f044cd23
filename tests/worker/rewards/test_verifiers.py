"""The verifier library: answers extracted and compared as math answers are graded."""

from __future__ import annotations

import pytest

from rlhf_worker.rewards import verifiers as v


def test_answers_are_found_where_the_formats_put_them() -> None:
    assert v.gsm8k_answer("Natalia sold 48 + 24 = 72 clips.\n#### 72") == "72"
    assert v.gsm8k_answer("#### 1\nthen #### 1,200") == "1,200"  # the last one
    assert v.gsm8k_answer("72") is None
    assert v.boxed_answer(r"so the answer is \boxed{\frac{1}{2}}.") == r"\frac{1}{2}"
    assert v.boxed_answer(r"\boxed{1} then \boxed{ {2} }") == "{2}"  # the last, braces kept
    assert v.boxed_answer(r"\fbox{7}") == "7"
    assert v.boxed_answer(r"\boxed{unbalanced") is None and v.boxed_answer("no box") is None


@pytest.mark.parametrize(
    ("answer", "truth"),
    [
        ("0.50", "1/2"),
        (r"\frac{2}{4}", "0.5"),
        (r"\dfrac12", "1/2"),
        ("1,200", "1200"),
        (r"$72$", "72"),
        (r"\text{72 }", "72."),
        ("2.0", "2"),
        (r"45^\circ", "45"),
        (r"50\%", "50"),
        ("1e3", "1000"),
        (r"\left( 1, 2 \right)", "(1, 2)"),
        ("-3", "-3.000"),
    ],
)
def test_equal_answers_in_different_forms_are_equal(answer: str, truth: str) -> None:
    assert v.math_equal(answer, truth), (v.normalize_answer(answer), v.normalize_answer(truth))


@pytest.mark.parametrize(
    ("answer", "truth"), [("72", "73"), ("1/2", "1/3"), ("x+1", "x+2"), (None, "1"), ("1", None)]
)
def test_different_answers_are_not(answer, truth) -> None:
    assert not v.math_equal(answer, truth)


def test_exact_match_and_format_rewards() -> None:
    assert v.exact_match(" Paris ", "paris") and not v.exact_match("Paris", "Rome")
    pattern = r"(?s)<think>.*</think>.*\\boxed\{.+\}.*"
    assert v.format_reward(r"<think>2+2</think> so \boxed{4}", pattern) == 1.0
    assert v.format_reward(r"\boxed{4}", pattern) == 0.0
    assert v.boxed_format("q", r"it is \boxed{4}") == 1.0 and v.boxed_format("q", "4") == 0.0
    assert v.gsm8k_format("q", "... #### 4") == 1.0 and v.gsm8k_format("q", "#### four") == 0.0


def test_the_built_in_format_rewards_load_by_name() -> None:
    from rlhf_worker.rewards.functions import load_reward_function

    assert load_reward_function("rlhf_worker.rewards:boxed_format") is v.boxed_format
    assert load_reward_function("rlhf_worker.rewards:gsm8k_format") is v.gsm8k_format
