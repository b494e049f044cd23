"""`rlhfctl crd`: print the CustomResourceDefinition generated from the API models."""

from __future__ import annotations

import argparse
import sys

from ..api.crd import crd_yaml


def add_parser(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "crd",
        help="print the RLHFJob CRD",
        description="Print the RLHFJob CustomResourceDefinition (YAML).",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    sys.stdout.write(crd_yaml())
    return 0
