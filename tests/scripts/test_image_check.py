"""The worker image's install check (scripts/image_check.py): its reading of a Dockerfile
and of a lock. The resolution itself runs in `make image-check` (it needs the index)."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[2]


def image_check() -> ModuleType:
    spec = importlib.util.spec_from_file_location("image_check", ROOT / "scripts/image_check.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_worker_dockerfile_installs_the_lock_and_the_project_only() -> None:
    check = image_check()
    dockerfile = (ROOT / "worker_image/Dockerfile").read_text()
    assert check.install_problems(dockerfile) == []
    assert check.image_python(dockerfile) == "3.12"


def test_an_install_beside_the_lock_is_named() -> None:
    check = image_check()
    dockerfile = (
        "ARG PYTHON=3.12\n"
        "RUN pip install --no-deps -r worker_image/requirements-gpu.lock\n"
        "RUN grep -v torch constraints.txt > c.txt \\\n"
        ' && pip install -c c.txt ".[worker]" "vllm==0.32.0"\n'
    )
    problems = check.install_problems(dockerfile)
    assert any(
        '`pip install -c c.txt ".[worker]" "vllm==0.32.0"` installs outside' in p for p in problems
    )
    assert any("no `pip install --no-deps .`" in p for p in problems)


def test_pins_read_a_compiled_lock() -> None:
    check = image_check()
    lock = "# header\nTorch==2.13.0\n    # via vllm\nopencv_python-headless==4.13.0.92 ; sys_platform == 'linux'\n"
    assert check.pins(lock) == {"torch": "2.13.0", "opencv-python-headless": "4.13.0.92"}
    pinned = check.pins((ROOT / "worker_image/requirements-gpu.lock").read_text())
    assert pinned["vllm"] == "0.32.0" and pinned["torch"] == "2.13.0"
