"""The `rlhfctl` entry point: builds the parser from each subcommand module."""

from __future__ import annotations

import argparse
import sys

from .. import __version__
from . import crd, manifests, operator, plan, profile, run, validate

SUBCOMMANDS = [validate, crd, plan, manifests, run, profile, operator]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rlhfctl", description="RLHF training jobs on Kubernetes, or locally."
    )
    parser.add_argument("--version", action="version", version=f"rlhfctl {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in SUBCOMMANDS:
        module.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        print("rlhfctl: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # e.g. `rlhfctl crd | head`
        return 0


if __name__ == "__main__":
    sys.exit(main())
