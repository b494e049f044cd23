"""A role's parameters on one rank: the home copy, transient copies, host offload.

As in ReaL, each role has one *home* layout. For a trained role (actor, critic)
it is the training layout: its shards are the parameters the optimizer owns
(the engine's modules hold these very tensors). A call that runs the role
under another layout (generation, inference) gets a *transient copy* made by
reallocation before the call and freed after it; nothing is copied back,
because transient copies are only read. Frozen roles (ref, reward) may be
*offloaded* to host memory between calls and restored before the next one;
the tensors are emptied and refilled in place (``.data``), so modules built on
them stay valid.

Every rank of the job holds a ``RoleWeights`` for every role (``shards`` is
None where the home layout does not place it), and all ranks of the source
and destination layouts must enter ``transient`` together: reallocation is
point-to-point between them.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
import torch.distributed as dist

from rlhf_worker.realloc.execute import MemoryStats, reallocate
from rlhf_worker.realloc.plan import (
    DEFAULT_BUCKET_BYTES,
    RankNode,
    ReallocPlan,
    plan_reallocation,
)
from rlhf_worker.realloc.pool import StoragePool
from rlhf_worker.sharding import Layout, ModelShape, rank_shards


@dataclass
class RoleWeights:
    name: str
    model: ModelShape
    home: Layout
    rank: int
    shards: dict[str, torch.Tensor] | None  # this rank's home shards (None outside the home)
    trainable: bool
    # Every rank must agree on these, including ranks without home shards (they
    # receive transient copies): the plan's buckets are counted in bytes.
    dtype: torch.dtype = torch.float32
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    rank_node: RankNode = 1
    bucket_bytes: int = DEFAULT_BUCKET_BYTES
    group: dist.ProcessGroup | None = None
    # CPU only: transient copies take their memory from this pool and give it back
    # when freed, so later copies reuse mapped memory (see realloc/pool.py).
    pool: StoragePool | None = None
    _plans: dict[Layout, ReallocPlan] = field(default_factory=dict, repr=False)
    _host: dict[str, torch.Tensor] | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.pool is not None and self.device.type != "cpu":
            raise ValueError(f"{self.name}: a storage pool is for CPU; CUDA caches memory itself")
        inside = self.rank in self.home.ranks
        if inside != (self.shards is not None):
            where = "inside" if inside else "outside"
            raise ValueError(f"{self.name}: rank {self.rank} is {where} the home layout")
        if self.shards is not None:
            expected = rank_shards(self.model, self.home, self.rank)
            if set(self.shards) != set(expected):
                raise ValueError(f"{self.name}: shards do not match the home layout")
            for tensor in self.shards.values():
                if tensor.dtype != self.dtype or tensor.device != self.device:
                    raise ValueError(
                        f"{self.name}: a shard is {tensor.dtype} on {tensor.device}, "
                        f"the role says {self.dtype} on {self.device}"
                    )

    @property
    def offloaded(self) -> bool:
        return self._host is not None

    def plan_to(self, layout: Layout) -> ReallocPlan:
        """The plan from the home layout to ``layout`` (computed once per layout)."""
        if layout not in self._plans:
            self._plans[layout] = plan_reallocation(
                self.model,
                self.home,
                layout,
                self.rank_node,
                element_bytes=torch.empty((), dtype=self.dtype).element_size(),
                bucket_bytes=self.bucket_bytes,
            )
        return self._plans[layout]

    @contextmanager
    def transient(
        self, layout: Layout, *, stats: MemoryStats | None = None
    ) -> Iterator[dict[str, torch.Tensor] | None]:
        """This rank's shards under ``layout`` for the duration of a call, then freed.

        The home layout itself yields the home shards. Elsewhere a shard identical
        to a home shard on the same rank is shared, not copied (the call only reads
        it); the rest is received. Ranks outside the layout get None. With a
        ``pool`` the copies' memory comes from it and goes back to it afterwards:
        the caller must not keep the copies beyond the ``with`` block.
        """
        if self.offloaded:
            raise RuntimeError(f"{self.name} is offloaded to host memory: restore it first")
        if layout == self.home:
            yield self.shards
            return
        copies = reallocate(
            self.plan_to(layout),
            self.shards,
            self.rank,
            dtype=self.dtype,
            device=self.device,
            group=self.group,
            alias_local=True,
            stats=stats,
            pool=self.pool,
        )
        try:
            yield copies
        finally:
            # Drop the copies even if the caller still holds the dict.
            if copies is not None:
                if self.pool is not None:
                    self.pool.give_unshared(copies, self.shards)
                copies.clear()

    def offload(self) -> None:
        """Move a frozen role's shards to host memory and free them on the device."""
        if self.trainable:
            raise ValueError(f"{self.name} is trained: its optimizer owns the parameters")
        if self.offloaded or self.shards is None:
            return
        self._host = offload_tensors(self.shards)

    def restore(self) -> None:
        """Bring offloaded shards back into the same tensor objects."""
        if self._host is None or self.shards is None:
            return
        restore_tensors(self.shards, self._host, self.device)
        self._host = None


def offload_tensors(tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Copy tensors to host buffers and empty them in place; returns the host copies.

    The tensors keep their identity (``.data`` is swapped), so modules built on them
    stay valid. Host buffers are pinned for CUDA tensors: the copies back are fast.
    """
    host: dict[str, torch.Tensor] = {}
    on_cuda = any(t.is_cuda for t in tensors.values())
    with torch.no_grad():
        for name, tensor in tensors.items():
            buffer = torch.empty(tensor.shape, dtype=tensor.dtype, pin_memory=tensor.is_cuda)
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
