"""A deliberately bad module: the contract reaching up into the coordinator, and kopf."""

from __future__ import annotations


def steps() -> object:
    from ..coordinator.schedule import iteration_steps

    return iteration_steps


def operator() -> object:
    import kopf

    return kopf
