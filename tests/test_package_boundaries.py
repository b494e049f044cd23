"""The two images stay apart: the operator never imports torch, the worker never kopf/kubernetes."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _imported_modules(package_dir: Path) -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for path in package_dir.rglob("*.py"):
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = {node.module.split(".")[0]}
            else:
                continue
            for name in names:
                found.setdefault(name, set()).add(str(path.relative_to(ROOT)))
    return found


@pytest.mark.parametrize(
    ("package", "forbidden"),
    [
        ("operator/rlhf_operator", {"torch", "transformers", "safetensors", "vllm", "numpy"}),
        ("worker_image/rlhf_worker", {"kopf", "kubernetes"}),
    ],
)
def test_package_never_imports(package: str, forbidden: set[str]) -> None:
    imported = _imported_modules(ROOT / package)
    offenders = {name: sorted(files) for name, files in imported.items() if name in forbidden}
    assert offenders == {}


def test_operator_cli_runs_with_torch_unavailable() -> None:
    code = (
        "import sys; sys.modules['torch'] = None; sys.modules['transformers'] = None\n"
        "from rlhf_operator.cli.main import main\n"
        "raise SystemExit(main(['validate', '-q', 'examples/tiny-ppo.yaml']))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
