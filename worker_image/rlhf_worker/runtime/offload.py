"""Frozen roles kept in host memory between their calls (the plan's `offloads`).

A role the plan offloads (reference, reward: never a trained one, whose
optimizer owns the parameters) is moved to host memory right after it is
loaded; each iteration the coordinator restores it onto its home devices
before its first use and offloads it again after its last (see the
coordinator's schedule). The parameters are emptied and refilled in place
(``.data``), so the modules built on them stay valid and nothing else has to
know. On a GPU the host copies are pinned, so the copies back are fast; on
CPU the device memory *is* host memory, so the tensors are only detached and
re-attached (no copy), which keeps the same bookkeeping exercised everywhere.
"""

from __future__ import annotations

import torch

from rlhf_worker.runtime.state import Runtime


def offload_role(rt: Runtime, role: str) -> dict[str, float]:
    """Move this rank's home shards of a frozen role to host memory; returns the bytes moved."""
    state = rt.roles[role]
    if state.trainer is not None:
        raise ValueError(f"{role} is trained: its optimizer owns the parameters, it stays put")
    if state.model is None or state.host is not None:
        return {"offloaded_bytes": 0.0}
    on_cuda = rt.device.type == "cuda"
    host: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        for name, param in state.model.local_state().items():
            if on_cuda:
                host[name] = torch.empty(param.shape, dtype=param.dtype, pin_memory=True)
                host[name].copy_(param.data, non_blocking=True)
            else:
                host[name] = param.data
        if on_cuda:
            torch.cuda.synchronize(rt.device)
        for param in state.model.local_state().values():
            param.data = torch.empty(0, dtype=param.dtype, device=param.device)
    state.host = host
    return {"offloaded_bytes": float(sum(t.numel() * t.element_size() for t in host.values()))}


def restore_role(rt: Runtime, role: str) -> dict[str, float]:
    """Bring an offloaded role's shards back into the same parameter objects."""
    state = rt.roles[role]
    if state.model is None or state.host is None:
        return {"restored_bytes": 0.0}
    with torch.no_grad():
        for name, param in state.model.local_state().items():
            param.data = state.host[name].to(rt.device, non_blocking=True)
        if rt.device.type == "cuda":
            torch.cuda.synchronize(rt.device)
    restored = sum(t.numel() * t.element_size() for t in state.host.values())
    state.host = None
    return {"restored_bytes": float(restored)}


def offloaded_roles(rt: Runtime) -> set[str]:
    return {o.role for o in rt.plan.offloads}
