"""`python -m rlhf_operator`: run the Kubernetes operator (same as `rlhfctl operator`)."""

from __future__ import annotations

import sys

from .cli.main import main

if __name__ == "__main__":
    sys.exit(main(["operator", *sys.argv[1:]]))
