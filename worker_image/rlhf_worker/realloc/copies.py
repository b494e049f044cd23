"""A role's parameters on one rank: the home copy, transient copies, host offload.

As in ReaL, each role has one *home* layout. For a trained role (actor, critic)
it is the training layout: its shards are the parameters the optimizer owns
(the engine's modules hold these very tensors). A call that runs the role
under another layout (generation, inference) gets a *transient copy* made by
reallocation before the call (``transient_copy``) and freed after it
(``release_copy``); nothing is copied back, because transient copies are only
read, and a destination shard that is a source shard, or a block of one, is a
view of it rather than a copy. With ``house`` (the job's
``placement.inPlaceResharding``) a trained role instead keeps one layout's copy
for good, with its home shards living inside it: later copies into that layout
receive what the rank lacks around them and copy nothing locally. Frozen roles
(ref, reward) may be *offloaded* to host memory between calls and restored
before the next one (``offload_tensors`` / ``restore_tensors``); the tensors are
emptied and refilled in place (``.data``), so modules built on them stay valid.

The worker runtime (``runtime/models.py``, ``runtime/offload.py``) calls these
between the control plane's commands: a reallocation, the call, a release are
separate commands, so a copy's lifetime is not one Python block. Every rank of
the source and destination layouts must make the same transient copy together:
reallocation is point-to-point between them; other ranks need not take part.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.distributed as dist

from rlhf_worker.model.storage import empty_shard
from rlhf_worker.realloc.execute import MemoryStats, reallocate
from rlhf_worker.realloc.plan import ReallocPlan, housing_indices, region_shape
from rlhf_worker.realloc.pool import StoragePool


def transient_copy(
    plan: ReallocPlan,
    home: Mapping[str, torch.Tensor] | None,
    rank: int,
    *,
    dtype: torch.dtype,
    device: torch.device,
    group: dist.ProcessGroup | None = None,
    pool: StoragePool | None = None,
    stats: MemoryStats | None = None,
    into: Mapping[str, torch.Tensor] | None = None,
) -> dict[str, torch.Tensor] | None:
    """This rank's shards under ``plan.dst``, made from the source shards ``home``.

    ``home`` is this rank's shards under ``plan.src`` (None outside it). A
    destination shard identical to one this rank already holds, or a block of its
    memory, is shared, not copied: a transient copy is only read. The rest is
    received (or copied from the part this rank holds). Ranks outside
    ``plan.dst`` get None. With a ``pool`` (CPU only) new shards take their
    memory from it; give it back with ``release_copy``. ``into``: the buffers
    ``house`` keeps home shards inside, filled around them in place.
    """
    if pool is not None and device.type != "cpu":
        raise ValueError("a storage pool is for CPU tensors; CUDA caches memory itself")
    detached = {k: v.detach() for k, v in home.items()} if home is not None else None
    return reallocate(
        plan,
        detached,
        rank,
        dtype=dtype,
        device=device,
        group=group,
        alias_local=True,
        pool=pool,
        stats=stats,
        into=into,
    )


def house(
    home: Mapping[str, torch.Tensor],
    plan: ReallocPlan,
    rank: int,
    stats: MemoryStats | None = None,
) -> dict[str, torch.Tensor]:
    """Move home shards inside buffers shaped as their destination shards; return the buffers.

    Where this rank's shard under ``plan.src`` is one block of memory inside its
    shard under ``plan.dst`` (``housing_indices``: e.g. a tp2 half inside the tp1
    whole), a buffer of the destination shard's shape is made, the home shard
    copied into its block, and the home tensor made that block (``.data``: the
    modules and optimizer state built on it stay valid). Given to
    ``transient_copy`` as ``into``, the buffers make every later copy under the
    plan in place: the home shards are already where the copy needs them, so
    this rank copies nothing locally and receives only what it lacks.

    The buffers hold the destination shards' memory for good (the home shards'
    included): a role kept this way trades that memory for the local copies of
    every later reallocation under the plan (HybridFlow keeps its training
    shards inside its generation weights for the same reason). Release copies
    made into them with ``release_copy``: memory shared with ``home`` is never
    given to a pool. The move in is a local copy, made once (counted in ``stats``).
    """
    housings: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        for name, index in housing_indices(plan, rank).items():
            shard = home[name]
            region = plan.dst_shards[rank][name]
            column_major = name in plan.column_major
            housing = empty_shard(region_shape(region), shard.dtype, shard.device, column_major)
            housing[index].copy_(shard)
            shard.data = housing[index]
            housings[name] = housing
            if stats is not None:
                stats.local_copy_bytes += shard.numel() * shard.element_size()
    return housings


def release_copy(
    copy: dict[str, torch.Tensor],
    home: Mapping[str, torch.Tensor] | None,
    pool: StoragePool | None,
) -> None:
    """Free a transient copy: its own memory goes back to ``pool`` (when given), the
    shards it shares with ``home`` stay the home copy's. The dict is emptied, so a
    caller that still holds it holds no tensor."""
    if pool is not None:
        pool.give_unshared(copy, home)
    copy.clear()


def offload_tensors(tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Copy tensors to host buffers and empty them in place; returns the host copies.

    The tensors keep their identity (``.data`` is swapped), so modules built on them
    stay valid. Host buffers are pinned for CUDA tensors: the copies back are fast.
    """
    host: dict[str, torch.Tensor] = {}
    on_cuda = any(t.is_cuda for t in tensors.values())
    with torch.no_grad():
        for name, tensor in tensors.items():
            # empty_like keeps the tensor's strides (a column-major shard stays one).
            buffer = torch.empty_like(tensor, device="cpu", pin_memory=tensor.is_cuda)
            buffer.copy_(tensor, non_blocking=True)
            host[name] = buffer
        if on_cuda:
            torch.cuda.synchronize()
        for tensor in tensors.values():
            tensor.data = torch.empty(0, dtype=tensor.dtype, device=tensor.device)
    return host


def restore_tensors(
    tensors: Mapping[str, torch.Tensor], host: Mapping[str, torch.Tensor], device: torch.device
) -> None:
    """Refill tensors emptied by `offload_tensors` from their host copies, in place."""
    with torch.no_grad():
        for name, tensor in tensors.items():
            # On CPU the host buffer itself becomes the tensor's memory again.
            tensor.data = host[name].to(device, non_blocking=True)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
