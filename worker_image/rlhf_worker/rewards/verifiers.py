"""Verifiers for verifiable-reward RL: the answer a response gives, and whether it is right.

Pure functions of text, for reward functions to build on:

- ``gsm8k_answer(text)``: the number after GSM8K's ``####`` marker (its reference
  solutions end ``#### 72``), else None;
- ``boxed_answer(text)``: the contents of the last ``\\boxed{...}`` (nested braces
  kept, as MATH-style solutions write ``\\boxed{\\frac{1}{2}}``), else None;
- ``normalize_answer(text)``: one canonical form for comparing answers: LaTeX
  wrappers (``\\text{}``, ``\\left``/``\\right``, ``$``, ``\\!``), thousands separators,
  units of degrees and percent, trailing dots and all white space removed; ``\\frac{a}{b}`` and
  ``\\dfrac`` written ``a/b``; numbers written as integers or simplest fractions
  (``0.50`` and ``1/2`` and ``\\frac{2}{4}`` are all ``1/2``);
- ``math_equal(answer, truth)``: the two normalised answers are equal, as numbers
  when both are (``2.0 == 2``), else as text;
- ``exact_match(answer, truth)``: equal after stripping surrounding space, case-folded;
- ``format_reward(response, pattern)``: 1 if the whole response matches a regular
  expression (e.g. ``(?s)<think>.*</think>.*\\\\boxed\\{.+\\}.*``), else 0.

And two built-in reward functions over ``(prompt, response)``: ``boxed_format`` (1
when the response ends with a boxed answer) and ``gsm8k_format`` (1 when it gives a
``#### n`` answer). Rewards that compare with a ground truth need the data row's
answer; with these verifiers such a reward is ``float(math_equal(boxed_answer(response),
answer))``.
"""

from __future__ import annotations

import math
import re
from fractions import Fraction

_GSM8K = re.compile(r"####\s*([^\n]+)")
_NUMBER = re.compile(r"^[-+]?(\d+(\.\d*)?|\.\d+)([eE][-+]?\d+)?$")
_FRACTION = re.compile(r"^([-+]?\d+)\s*/\s*([-+]?\d+)$")
_LATEX_FRAC = re.compile(r"\\[dt]?frac\s*\{([^{}]*)\}\s*\{([^{}]*)\}")
_LATEX_FRAC_SHORT = re.compile(r"\\[dt]?frac\s*(\d)\s*(\d)")
_TEXT = re.compile(r"\\(?:text|textbf|mathrm|mbox)\s*\{([^{}]*)\}")
_THOUSANDS = re.compile(r"(?<=\d),(?=\d{3}\b)")


def gsm8k_answer(text: str) -> str | None:
    """The answer after the last ``####`` (GSM8K's reference format), stripped."""
    found = _GSM8K.findall(text)
    return found[-1].strip() if found else None


def boxed_answer(text: str) -> str | None:
    """The contents of the last ``\\boxed{...}`` or ``\\fbox{...}`` (braces balanced)."""
    start = max(text.rfind("\\boxed"), text.rfind("\\fbox"))
    if start < 0:
        return None
    brace = text.find("{", start)
    if brace < 0:
        return None
    depth = 0
    for i in range(brace, len(text)):
        if text[i] == "{":
            depth += 1
        elif text[i] == "}":
            depth -= 1
            if depth == 0:
                return text[brace + 1 : i].strip()
    return None  # unbalanced: no answer


def _as_number(text: str) -> Fraction | None:
    if _NUMBER.match(text):
        try:
            value = float(text)
        except ValueError:
            return None
        if not math.isfinite(value):
            return None
        return Fraction(text) if "e" not in text.lower() else Fraction(value)
    match = _FRACTION.match(text)
    if match and int(match.group(2)) != 0:
        return Fraction(int(match.group(1)), int(match.group(2)))
    return None


def normalize_answer(text: str) -> str:
    """A canonical form of an answer for comparison (see the module docstring)."""
    s = text.strip()
    for _ in range(3):  # nested wrappers: \\text{\\textbf{x}}
        s = _TEXT.sub(r"\1", s)
    s = s.replace("\\left", "").replace("\\right", "").replace("\\!", "").replace("\\,", "")
    s = s.replace("$", "").replace("^\\circ", "").replace("^{\\circ}", "").replace("\\%", "")
    s = s.replace("%", "").replace("°", "")
    s = _LATEX_FRAC.sub(r"(\1)/(\2)", s)
    s = _LATEX_FRAC_SHORT.sub(r"\1/\2", s)
    s = _THOUSANDS.sub("", s)
    s = s.strip().rstrip(".").strip()
    s = re.sub(r"\((-?\d+)\)/\((-?\d+)\)", r"\1/\2", s)  # (a)/(b) of plain numbers
    s = re.sub(r"\s+", "", s)  # math answers: "x + 1" is "x+1", "( 1, 2 )" is "(1,2)"
    number = _as_number(s)
    if number is not None:
        return (
            str(number.numerator)
            if number.denominator == 1
            else f"{number.numerator}/{number.denominator}"
        )
    return s


def math_equal(answer: str | None, truth: str | None) -> bool:
    """Whether an answer equals the ground truth: as numbers when both are numbers (within
    a relative 1e-9, for decimals that are not exact fractions), else as normalised text."""
    if answer is None or truth is None:
        return False
    a, t = normalize_answer(answer), normalize_answer(truth)
    if a == t:
        return True
    x, y = _as_number(a), _as_number(t)
    if x is not None and y is not None:
        return math.isclose(float(x), float(y), rel_tol=1e-9, abs_tol=1e-12)
    return False


def exact_match(answer: str | None, truth: str | None) -> bool:
    """Equal after stripping surrounding white space, ignoring case."""
    if answer is None or truth is None:
        return False
    return answer.strip().casefold() == truth.strip().casefold()


def format_reward(response: str, pattern: str) -> float:
    """1.0 if the whole response matches ``pattern`` (a regular expression), else 0.0."""
    return 1.0 if re.fullmatch(pattern, response.strip()) else 0.0


def boxed_format(prompt: str, response: str) -> float:
    """1.0 when the response gives a boxed answer, else 0.0 (a format reward)."""
    return 1.0 if boxed_answer(response) else 0.0


def gsm8k_format(prompt: str, response: str) -> float:
    """1.0 when the response gives a ``#### n`` answer that is a number, else 0.0."""
    answer = gsm8k_answer(response)
    return 1.0 if answer is not None and _as_number(normalize_answer(answer)) is not None else 0.0
