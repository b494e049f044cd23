"""A deliberately bad package __init__: it runs whenever the worker imports the contract."""

from .planner import leaky

__all__ = ["leaky"]
