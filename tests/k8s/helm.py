"""Helm (helm-sdkpy, the Helm v4 library) run in a subprocess: the library
reads HELM_DRIVER from the environment the process started with, and the
release must live in memory (the emulator cannot store Helm's protobuf Secret).

    python -m tests.k8s.helm lint CHART
    python -m tests.k8s.helm install CHART KUBECONFIG NAMESPACE VALUES_JSON

print one JSON document: the lint result, or the install result (its
`manifest` holds the rendered YAML).
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]


def available() -> bool:
    try:
        import helm_sdkpy  # noqa: F401
    except (ImportError, OSError):
        return False
    return True


def run(*args: str) -> dict[str, Any]:
    env = {**os.environ, "HELM_DRIVER": "memory"}
    proc = subprocess.run(
        [sys.executable, "-m", "tests.k8s.helm", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    if proc.returncode != 0:
        raise AssertionError(f"helm {args[0]} failed: {proc.stderr.strip()[-2000:]}")
    return dict(json.loads(proc.stdout))


def _main(argv: list[str]) -> int:
    import helm_sdkpy as helm

    if argv[0] == "lint":
        result = asyncio.run(helm.Lint(helm.Configuration()).run(argv[1]))
    else:
        chart, kubeconfig, namespace, values = argv[1:5]
        config = helm.Configuration(namespace=namespace, kubeconfig=kubeconfig)
        result = asyncio.run(
            helm.Install(config).run(
                "rlhf", chart, values=json.loads(values), wait=False, create_namespace=False
            )
        )
    print(json.dumps(result, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
