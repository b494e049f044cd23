"""A deliberately bad module: the worker reaching past the contract, and Kubernetes."""

from __future__ import annotations

from rlhf_operator.planner.plan import Plan


def schedule() -> object:
    # `from package import module` names the module too.
    from rlhf_operator import coordinator

    return coordinator, Plan


def client() -> object:
    import kubernetes

    return kubernetes.client
