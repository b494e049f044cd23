"""Frozen roles kept in host memory between their calls (the plan's `offloads`).

A role the plan offloads (reference, reward: never a trained one, whose
optimizer owns the parameters) is moved to host memory right after it is
loaded; each iteration the coordinator restores it onto its home devices
before its first use and offloads it again after its last (see the
coordinator's schedule). The parameters are emptied and refilled in place
(``rlhf_worker.realloc.copies.offload_tensors``), so the modules built on them stay
valid and nothing else has to know.
"""

from __future__ import annotations

from rlhf_worker.realloc.copies import offload_tensors, restore_tensors
from rlhf_worker.runtime.state import Runtime


def offload_role(rt: Runtime, role: str) -> dict[str, float]:
    """Move this rank's home shards of a frozen role to host memory; returns the bytes moved."""
    state = rt.roles[role]
    if state.trainer is not None:
        raise ValueError(f"{role} is trained: its optimizer owns the parameters, it stays put")
    if state.model is None or state.host is not None:
        return {"offloaded_bytes": 0.0}
    state.host = offload_tensors(state.model.local_state())
    return {"offloaded_bytes": float(sum(t.nbytes for t in state.host.values()))}


def restore_role(rt: Runtime, role: str) -> dict[str, float]:
    """Bring an offloaded role's shards back into the same parameter objects."""
    state = rt.roles[role]
    if state.model is None or state.host is None:
        return {"restored_bytes": 0.0}
    restore_tensors(state.model.local_state(), state.host, rt.device)
    restored = sum(t.nbytes for t in state.host.values())
    state.host = None
    return {"restored_bytes": float(restored)}


def offloaded_roles(rt: Runtime) -> set[str]:
    return {o.role for o in rt.plan.offloads}
