"""A deliberately bad module: the operator side reaching into the worker, and torch."""

from __future__ import annotations

import importlib


def layout() -> object:
    # Lazily, inside a function: still an import.
    from rlhf_worker.sharding import Layout

    return Layout


def zeros() -> object:
    import torch

    return torch.zeros(1)


def engine() -> object:
    return importlib.import_module("rlhf_worker.engine")
