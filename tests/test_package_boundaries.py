"""The two sides stay apart, and meet only in the contract.

- The operator image never imports torch (or transformers, safetensors, vllm, numpy);
  the worker never imports kopf or kubernetes.
- The operator side (every module of ``rlhf_operator``) imports nothing from ``rlhf_worker``.
- The worker imports from ``rlhf_operator`` only the contract layer: the API (``api``),
  the torch-free shared types (``contract``) and the wire (``controlplane``); never the
  planner, the coordinator, the Kubernetes code or the CLI.
- The contract layer itself (and ``rlhf_operator/__init__.py``, which runs whenever the
  worker imports it) imports nothing else of ``rlhf_operator`` and nothing the worker
  may not, so the worker cannot reach the rest through the contract either.

Every import statement counts, lazy ones inside functions included, relative imports
resolved to the modules they name, and so do ``importlib.import_module("...")`` and
``__import__("...")`` with a literal name. The checker is shown to catch each rule on a
deliberately bad tree (``tests/boundary_fixture``).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = {"rlhf_operator": "operator/rlhf_operator", "rlhf_worker": "worker_image/rlhf_worker"}
CONTRACT = ("rlhf_operator.api", "rlhf_operator.contract", "rlhf_operator.controlplane")
DYNAMIC_IMPORTS = {"import_module", "__import__"}
FORBIDDEN = {
    "rlhf_operator": {"torch", "transformers", "safetensors", "vllm", "numpy"},
    "rlhf_worker": {"kopf", "kubernetes"},
}


def _within(module: str, packages: tuple[str, ...] | str) -> bool:
    prefixes = (packages,) if isinstance(packages, str) else packages
    return any(module == p or module.startswith(p + ".") for p in prefixes)


def module_name(path: Path, package_dir: Path, package: str) -> str:
    parts = [package, *path.relative_to(package_dir).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path, module: str) -> Iterator[tuple[int, str]]:
    """(line, absolute module or module.attribute) of every import in a file."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Call) and node.args:
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            first = node.args[0]
            literal = isinstance(first, ast.Constant) and isinstance(first.value, str)
            if name in DYNAMIC_IMPORTS and literal:
                yield node.lineno, str(first.value)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1])
                source = f"{base}.{node.module}" if node.module else base
            else:
                source = node.module or ""
            for alias in node.names:
                yield node.lineno, f"{source}.{alias.name}"


def broken_rule(importer: str, imported: str) -> str | None:
    """The rule an import breaks, or None."""
    top = imported.split(".")[0]
    side = importer.split(".")[0]
    # What the worker loads of rlhf_operator: the contract layer and the package's __init__.
    shared = importer == "rlhf_operator" or _within(importer, CONTRACT)
    if top in FORBIDDEN.get(side, set()):
        return f"the {side} package never imports {top}"
    if shared and top in FORBIDDEN["rlhf_worker"]:
        return f"the contract layer never imports {top} (the worker loads it)"
    if side == "rlhf_operator" and top == "rlhf_worker":
        return "the operator side imports nothing from rlhf_worker"
    if side == "rlhf_worker" and top == "rlhf_operator" and not _within(imported, CONTRACT):
        return "the worker imports only the contract layer (api, contract, controlplane)"
    if shared and top == "rlhf_operator" and not _within(imported, CONTRACT):
        return "the contract layer imports nothing else of rlhf_operator"
    return None


def violations(tree: Path) -> list[str]:
    """Every broken rule under a checkout (or a fixture laid out like one), one line each."""
    out = []
    for package, relative in PACKAGES.items():
        package_dir = tree / relative
        for path in sorted(package_dir.rglob("*.py")):
            importer = module_name(path, package_dir, package)
            for line, imported in imports_of(path, importer):
                rule = broken_rule(importer, imported)
                if rule is not None:
                    where = path.relative_to(tree)
                    out.append(f"{where}:{line}: {imported}: {rule}")
    return out


def test_the_checkout_keeps_every_rule() -> None:
    assert violations(ROOT) == []


def test_the_checker_catches_each_rule_on_a_bad_tree() -> None:
    found = violations(ROOT / "tests" / "boundary_fixture")
    assert found == [
        "operator/rlhf_operator/__init__.py:3: rlhf_operator.planner.leaky: "
        "the contract layer imports nothing else of rlhf_operator",
        "operator/rlhf_operator/contract/upward.py:7: "
        "rlhf_operator.coordinator.schedule.iteration_steps: "
        "the contract layer imports nothing else of rlhf_operator",
        "operator/rlhf_operator/contract/upward.py:13: kopf: "
        "the contract layer never imports kopf (the worker loads it)",
        "operator/rlhf_operator/planner/leaky.py:10: rlhf_worker.sharding.Layout: "
        "the operator side imports nothing from rlhf_worker",
        "operator/rlhf_operator/planner/leaky.py:16: torch: "
        "the rlhf_operator package never imports torch",
        "operator/rlhf_operator/planner/leaky.py:22: rlhf_worker.engine: "
        "the operator side imports nothing from rlhf_worker",
        "worker_image/rlhf_worker/reaching.py:5: rlhf_operator.planner.plan.Plan: "
        "the worker imports only the contract layer (api, contract, controlplane)",
        "worker_image/rlhf_worker/reaching.py:10: rlhf_operator.coordinator: "
        "the worker imports only the contract layer (api, contract, controlplane)",
        "worker_image/rlhf_worker/reaching.py:16: kubernetes: "
        "the rlhf_worker package never imports kubernetes",
    ]


def test_relative_imports_resolve_to_the_modules_they_name(tmp_path: Path) -> None:
    init = tmp_path / "pkg" / "sub" / "__init__.py"
    init.parent.mkdir(parents=True)
    init.write_text("from . import a\nfrom ..b import c\n")
    leaf = init.with_name("leaf.py")
    leaf.write_text("from .a import x\nfrom ..b import c\n")
    assert [m for _, m in imports_of(init, "pkg.sub")] == ["pkg.sub.a", "pkg.b.c"]
    assert [m for _, m in imports_of(leaf, "pkg.sub.leaf")] == ["pkg.sub.a.x", "pkg.b.c"]


@pytest.mark.parametrize(
    "module", ["rlhf_operator.cli.main", "rlhf_operator.coordinator.local", "rlhf_operator.k8s.run"]
)
def test_operator_modules_import_with_the_worker_and_torch_unavailable(module: str) -> None:
    code = (
        "import sys\n"
        "for name in ('torch', 'transformers', 'rlhf_worker'): sys.modules[name] = None\n"
        f"import {module}\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_operator_cli_runs_with_torch_unavailable() -> None:
    code = (
        "import sys; sys.modules['torch'] = None; sys.modules['transformers'] = None\n"
        "from rlhf_operator.cli.main import main\n"
        "raise SystemExit(main(['validate', '-q', 'examples/tiny-ppo.yaml']))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
