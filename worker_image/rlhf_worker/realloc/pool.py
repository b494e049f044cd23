"""Reusing the memory of freed transient copies on CPU, as the CUDA caching allocator does on GPU.

A transient copy is made by reallocation before a call and freed after it, every
iteration, with the same shapes each time. On GPU, torch's caching allocator
hands the freed blocks back to the next copy. On CPU the memory goes back to the
system (big allocations are ``mmap``\\ ed and ``munmap``\\ ed), and the next copy
faults every page in again: on the development machine that first touch runs at
about 1 GB/s, slower than the gloo transfer that fills the pages. A
``StoragePool`` keeps the freed storages and lends them to the next reallocation
instead, so steady-state iterations write into memory that is already mapped.

Rules, each with its reason:

* Only storages given back explicitly are kept (``give``), and only whole ones
  (offset 0, the tensor covers the storage): a view into a bigger tensor, e.g.
  a destination shard shared with the home copy, must never be lent out.
* A kept storage is lent again only when nothing but the pool references it
  (torch's storage use count is 1; torch's CUDA-graph trees use the same
  check). A caller that kept a tensor, a view of it or a module built on it
  keeps its storage out of reach: the pool never hands out memory in use.
* A storage is matched by (device, bytes) exactly; shapes and dtypes are
  free. A role's transient copies repeat their shapes each iteration, and the
  packing buffers repeat per layer, so exact sizes are reused without the waste
  of size classes.
* The bytes kept are bounded by ``limit_bytes``; giving back beyond it drops the
  oldest storages first (their memory returns to the system once unreferenced).
  ``held_bytes`` says what is kept now; it counts a storage still referenced
  elsewhere too, so the bound is conservative.

Use it on CPU only: on CUDA the caching allocator already does this, and a second
cache on top would hide memory from it.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping

import torch

# A pool bigger than the transient copies it serves only holds memory idle.
DEFAULT_POOL_BYTES = 2 << 30


def _in_use_elsewhere(storage: torch.UntypedStorage) -> bool:
    # The pool's own Python storage object holds one reference; any tensor or
    # view on the storage (including one inside a pending gloo operation) adds one.
    return bool(torch._C._storage_Use_Count(storage._cdata) > 1)


class StoragePool:
    """Freed storages kept for reuse, matched by (device, bytes), at most ``limit_bytes`` held."""

    def __init__(self, limit_bytes: int = DEFAULT_POOL_BYTES) -> None:
        if limit_bytes < 0:
            raise ValueError(f"pool limit must be >= 0 bytes, got {limit_bytes}")
        self.limit_bytes = limit_bytes
        self.held_bytes = 0
        self.reused_bytes = 0  # bytes lent from the pool rather than newly allocated
        self.new_bytes = 0  # bytes allocated because nothing free matched
        # By data pointer, in the order given back (dicts keep insertion order), so
        # that eviction drops the storage given back longest ago; and the same
        # pointers by (device, bytes), newest last, so a request looks only at
        # storages of its size (a transient copy of a 7B model is hundreds of them).
        self._kept: dict[int, tuple[torch.device, int, torch.UntypedStorage]] = {}
        self._by_size: dict[tuple[torch.device, int], list[int]] = {}
        # A worker may serve commands from several threads (gRPC): one pool, one lock.
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._kept)

    def holds(self, tensor: torch.Tensor) -> bool:
        """Whether this tensor's storage is kept here (given back, not lent again yet)."""
        return tensor.untyped_storage().data_ptr() in self._kept

    def empty(
        self, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device | str = "cpu"
    ) -> torch.Tensor:
        """An uninitialised contiguous tensor: a free kept storage if one matches, else new."""
        if not isinstance(device, torch.device):
            device = torch.device(device)
        numel = 1
        for size in shape:
            numel *= size
        nbytes = numel * dtype.itemsize
        with self._lock:
            same_size = self._by_size.get((device, nbytes), [])
            # Newest first: the storage given back last is the likeliest to be in cache.
            for position in range(len(same_size) - 1, -1, -1):
                storage = self._kept[same_size[position]][2]
                if not _in_use_elsewhere(storage):
                    self._forget(same_size[position])
                    self.reused_bytes += nbytes
                    return torch.empty(0, dtype=dtype, device=device).set_(storage).view(shape)
            self.new_bytes += nbytes
        return torch.empty(shape, dtype=dtype, device=device)

    def _forget(self, pointer: int) -> None:
        """Stop keeping a storage (the lock is held)."""
        device, nbytes, _ = self._kept.pop(pointer)
        self.held_bytes -= nbytes
        same_size = self._by_size[(device, nbytes)]
        same_size.remove(pointer)
        if not same_size:
            del self._by_size[(device, nbytes)]

    def give(self, tensor: torch.Tensor) -> bool:
        """Keep this tensor's storage for reuse if it is a whole storage; say whether it is kept.

        The caller may still hold the tensor: its storage is lent again only once
        nothing else references it.
        """
        storage = tensor.untyped_storage()
        nbytes = storage.nbytes()
        whole = tensor.storage_offset() == 0 and nbytes == tensor.numel() * tensor.element_size()
        if not whole or nbytes == 0 or nbytes > self.limit_bytes:
            return False
        pointer = storage.data_ptr()
        with self._lock:
            if pointer in self._kept:
                return True  # given back twice
            self._kept[pointer] = (tensor.device, nbytes, storage)
            self._by_size.setdefault((tensor.device, nbytes), []).append(pointer)
            self.held_bytes += nbytes
            while self.held_bytes > self.limit_bytes:
                self._forget(next(iter(self._kept)))
        return True

    def give_unshared(
        self, tensors: Mapping[str, torch.Tensor], shared: Mapping[str, torch.Tensor] | None
    ) -> int:
        """Give back the tensors of a transient copy, except those sharing memory with ``shared``.

        ``shared`` is the home shards the copy may alias (``alias_local``): their
        memory belongs to the home copy. Returns the bytes kept.
        """
        home = {t.untyped_storage().data_ptr() for t in (shared or {}).values() if t.numel()}
        kept = 0
        for tensor in tensors.values():
            if tensor.untyped_storage().data_ptr() in home:
                continue
            if self.give(tensor):
                kept += tensor.numel() * tensor.element_size()
        return kept

    def clear(self) -> None:
        """Drop every kept storage (their memory returns once nothing else holds it)."""
        with self._lock:
            self._kept.clear()
            self._by_size.clear()
            self.held_bytes = 0
