"""`rlhfctl validate` as a user runs it: a real process, exit codes, one line per problem."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted(str(p) for p in (ROOT / "examples").glob("*.yaml"))


def rlhfctl(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [sys.executable, "-m", "rlhf_operator.cli.main", *args],
        input=stdin.decode("utf-8", "replace") if stdin is not None else None,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert "Traceback" not in result.stdout + result.stderr
    return result


def test_examples_are_valid() -> None:
    result = rlhfctl("validate", *EXAMPLES)
    assert result.returncode == 0, result.stderr
    assert result.stdout.count(": valid") == len(EXAMPLES)


def test_invalid_documents_exit_1_with_one_line_each(tmp_path: Path) -> None:
    job = (ROOT / "examples" / "tiny-ppo.yaml").read_text()
    bad = job.replace("dtype: float32", "dtype: fp8", 1).replace("minibatches: 2", "minibatchez: 2")
    path = tmp_path / "jobs.yaml"
    path.write_text(job + "---\n" + bad + "---\nkind: ConfigMap\n---\n")
    result = rlhfctl("validate", str(path))
    assert result.returncode == 1
    assert f"{path}[0]: RLHFJob/tiny-ppo: valid" in result.stdout
    errors = result.stderr.strip().splitlines()
    assert f"{path}[1]: RLHFJob/tiny-ppo: spec.models.actor.dtype: Input should be" in errors[0]
    assert any("spec.training.minibatchez: unknown field" in e for e in errors)
    assert errors[-1] == f"{path}[2]: kind: expected RLHFJob, got 'ConfigMap'"


def test_reads_standard_input() -> None:
    text = (ROOT / "examples" / "tiny-grpo.yaml").read_bytes()
    result = rlhfctl("validate", "-", stdin=text)
    assert result.returncode == 0 and "-[0]: RLHFJob/tiny-grpo: valid" in result.stdout


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"\xff\xfe\x00garbage", "not UTF-8 text"),
        (b"a: [1, 2\n", "not valid YAML at line 2"),
        (b"[" * 5000 + b"]" * 5000, "nesting deeper than 64 levels"),
        (b"- 1\n- 2\n", "expected a mapping (an RLHFJob), got list"),
        (b"", "contains no RLHFJob"),
        (
            b"a: &a [1,1,1,1,1,1,1,1,1,1]\n"
            + b"".join(
                f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join([f'*{chr(97 + i)}'] * 10)}]\n".encode()
                for i in range(7)
            ),
            "more than 200000 YAML nodes once aliases are expanded",
        ),
    ],
    ids=["binary", "syntax", "deep", "list", "empty", "alias-bomb"],
)
def test_unreadable_input_gets_one_clear_line(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "input.yaml"
    path.write_bytes(content)
    result = rlhfctl("validate", str(path))
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], lines


def test_missing_directory_and_huge_files(tmp_path: Path) -> None:
    huge = tmp_path / "huge.yaml"
    huge.write_bytes(b"# " + b"x" * (3 * 1024 * 1024) + b"\n")
    result = rlhfctl("validate", str(tmp_path / "absent.yaml"), str(tmp_path), str(huge))
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        f"{tmp_path / 'absent.yaml'}: cannot read: No such file or directory",
        f"{tmp_path}: is a directory, not a manifest file",
        f"{huge}: larger than 2 MiB",
    ]


def test_crd_command_prints_the_checked_in_file() -> None:
    result = rlhfctl("crd")
    assert result.returncode == 0
    assert result.stdout == (ROOT / "crds" / "rlhf.dev_rlhfjobs.yaml").read_text()


def test_no_command_prints_help_and_exits_2() -> None:
    result = rlhfctl()
    assert result.returncode == 2 and "validate" in result.stdout
