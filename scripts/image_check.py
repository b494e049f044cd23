"""Prove, without Docker, that the worker image's install resolves (`make image-check`).

The image installs exactly one requirement set: worker_image/requirements-gpu.lock
(with --no-deps), then the project itself (--no-deps). This script checks that

1. every ``pip install`` in worker_image/Dockerfile is one of those two, so the lock
   is the image's whole requirement set;
2. the lock resolves: requirements-gpu.in, constrained by the lock, resolves with
   ``uv pip compile`` for the image's Python (the Dockerfile's ``ARG PYTHON``) on
   Linux x86_64 (manylinux_2_28) to exactly the lock's pins. uv reads package
   metadata only (seconds, no wheels downloaded); a conflict, a pin the index no
   longer has or a lock that drifted from the .in fails with uv's explanation.

Exit status 0 when all hold; otherwise 1 with one line per problem.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "worker_image" / "Dockerfile"
REQUIREMENTS = ROOT / "worker_image" / "requirements-gpu.in"
LOCK = ROOT / "worker_image" / "requirements-gpu.lock"
PLATFORM = "x86_64-manylinux_2_28"
LOCK_INSTALL = "pip install --no-deps -r worker_image/requirements-gpu.lock"
PROJECT_INSTALL = "pip install --no-deps ."


def run_commands(dockerfile: str) -> list[str]:
    """The Dockerfile's RUN instructions, continuation lines joined, whitespace collapsed."""
    joined = re.sub(r"\\\n", " ", dockerfile)
    runs = [line.strip()[4:] for line in joined.splitlines() if line.strip().startswith("RUN ")]
    return [" ".join(run.split()) for run in runs]


def install_problems(dockerfile: str) -> list[str]:
    """Every pip install must be the lock's or the project's, and both must be there."""
    problems = []
    installs = [
        part.strip()
        for run in run_commands(dockerfile)
        for part in re.split(r"&&|;", run)
        if "pip install" in part
    ]
    for install in installs:
        if install not in (LOCK_INSTALL, PROJECT_INSTALL):
            problems.append(
                f"{DOCKERFILE.name}: `{install}` installs outside the lock"
                f" (allowed: `{LOCK_INSTALL}`, `{PROJECT_INSTALL}`)"
            )
    for needed in (LOCK_INSTALL, PROJECT_INSTALL):
        if needed not in installs:
            problems.append(f"{DOCKERFILE.name}: no `{needed}`")
    return problems


def image_python(dockerfile: str) -> str | None:
    match = re.search(r"^ARG PYTHON=(\d+\.\d+)\s*$", dockerfile, re.MULTILINE)
    return match.group(1) if match else None


def pins(lock_text: str) -> dict[str, str]:
    """name -> version of a compiled requirements file (names normalised)."""
    found = {}
    for line in lock_text.splitlines():
        match = re.match(r"^([A-Za-z0-9_.\-\[\]]+)==([^\s;]+)", line)
        if match:
            name = re.sub(r"[-_.]+", "-", match.group(1).split("[")[0]).lower()
            found[name] = match.group(2)
    return found


def resolve(python: str, uv: str) -> tuple[str | None, str]:
    """The .in resolved under the lock's pins: (compiled text or None, uv's messages)."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "resolved.txt"
        command = [
            uv,
            "pip",
            "compile",
            str(REQUIREMENTS.relative_to(ROOT)),
            "--constraint",
            str(LOCK.relative_to(ROOT)),
            "--python-version",
            python,
            "--python-platform",
            PLATFORM,
            "--no-emit-package",
            "rlhf-operator",
            "--quiet",
            "--output-file",
            str(out),
        ]
        done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
        if done.returncode != 0:
            return None, done.stderr.strip()
        return out.read_text(), done.stderr.strip()


def main() -> int:
    uv = shutil.which("uv") or str(Path(sys.executable).with_name("uv"))
    dockerfile = DOCKERFILE.read_text()
    problems = install_problems(dockerfile)
    python = image_python(dockerfile)
    if python is None:
        problems.append(f"{DOCKERFILE.name}: no `ARG PYTHON=X.Y` naming the image's Python")
    elif not LOCK.exists():
        problems.append(f"{LOCK.name} is missing: run `make image-lock`")
    else:
        resolved, messages = resolve(python, uv)
        if resolved is None:
            problems.append(f"{REQUIREMENTS.name} does not resolve under {LOCK.name}:")
            problems.extend(f"  {line}" for line in messages.splitlines())
        else:
            want, have = pins(resolved), pins(LOCK.read_text())
            for name in sorted(set(want) | set(have)):
                if want.get(name) != have.get(name):
                    problems.append(
                        f"{LOCK.name}: {name} is {have.get(name, 'absent')}, the resolution"
                        f" says {want.get(name, 'absent')}: run `make image-lock`"
                    )
            if not problems:
                print(
                    f"image-check: {len(have)} pinned packages resolve for Python {python}"
                    f" on {PLATFORM}; the Dockerfile installs the lock and the project only"
                )
    for problem in problems:
        print(f"image-check: {problem}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
