"""`rlhfctl operator`: run the Kubernetes operator (kopf) in the foreground.

Every flag has an RLHF_OPERATOR_* environment variable (the Helm chart uses
those); a flag wins over its variable."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from typing import Any

from ..contract.launch import LOG_LEVELS


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "operator",
        help="run the Kubernetes operator",
        description="Run the RLHFJob operator: watches RLHFJobs, plans them and runs their pods.",
    )
    p.add_argument(
        "-n",
        "--namespace",
        action="append",
        dest="namespaces",
        help="namespace to watch (repeatable); default: all namespaces",
    )
    p.add_argument(
        "--kubeconfig", help="kubeconfig file (default: in-cluster, then ~/.kube/config)"
    )
    p.add_argument("--metrics-port", type=int, help="port of /metrics (0: off; default 8080)")
    p.add_argument("--health-port", type=int, help="port of /healthz (0: off; default 8081)")
    p.add_argument("--log-level", choices=LOG_LEVELS)
    p.add_argument("--worker-image", help="default worker image")
    p.add_argument("--coordinator-image", help="default coordinator image")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    # Imported here: kopf and kubernetes are the operator extra's, not every rlhfctl's.
    from ..k8s.config import OperatorConfig
    from ..k8s.run import main

    try:
        config = OperatorConfig.from_env()
    except ValueError as err:  # the message names the variable
        print(f"rlhfctl operator: {err}", file=sys.stderr)
        return 2
    overrides = {
        "namespaces": tuple(args.namespaces) if args.namespaces else None,
        "metrics_port": args.metrics_port,
        "health_port": args.health_port,
        "log_level": args.log_level,
        "worker_image": args.worker_image,
        "coordinator_image": args.coordinator_image,
    }
    config = dataclasses.replace(config, **{k: v for k, v in overrides.items() if v is not None})
    return main(config, args.kubeconfig)
