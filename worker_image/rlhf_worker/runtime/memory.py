"""A call's measured peak memory on this rank: what `metrics.jsonl` reports as `peak_bytes`.

On CUDA, ``torch.cuda.max_memory_allocated`` after resetting the peak at the call's
start: every tensor on the device, whoever allocated it (other roles' weights, the
data held between calls, vLLM's KV cache in this process).

On CPU torch keeps no allocation statistics, so ``CpuAllocations`` counts the same
thing itself. At the start it finds every live CPU tensor (the garbage collector
tracks tensors) and adds up their storages once each: the weights, optimizer state
and data this rank already holds. During the call a ``TorchDispatchMode`` sees every
operator's outputs, autograd's backward included, and adds each new storage; a
finalizer on the storage subtracts it when torch frees it (torch keeps one Python
object per live storage, so the finalizer runs when the memory goes). What it does
not see: buffers torch allocates inside an operator and frees before returning
(a matmul's workspace, gloo's staging), and memory outside torch (the Python heap,
tokenizers). The peak is therefore a slight undercount of the process's tensor
memory, and the same quantity as the CUDA counter up to the allocator's rounding
(CUDA rounds blocks to 512 bytes). Counting costs ~35 ms per call to enumerate the
live objects and a Python call per operator (a few milliseconds per call of a tiny
model): small beside the CPU jobs it runs in.
"""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten


class CpuAllocations(TorchDispatchMode):
    """Live bytes of CPU tensor storages, and their peak, while the mode is active."""

    def __init__(self) -> None:
        super().__init__()
        self._sizes: dict[int, int] = {}  # storage data_ptr -> bytes
        self._finalizers: list[weakref.finalize] = []
        self.current = 0
        self.peak = 0
        # No gc.collect() first: tensors in unreachable cycles hold their memory until the
        # collector runs, and CUDA's counter would count them too (a full collection
        # also costs ~70 ms in a worker, twice the enumeration).
        for obj in gc.get_objects():
            # type(), not isinstance(): some module proxies warn when asked their class.
            if issubclass(type(obj), torch.Tensor):
                self._track(obj)
        self.peak = self.current

    def _track(self, tensor: torch.Tensor) -> None:
        if tensor.device.type != "cpu" or tensor.is_sparse or tensor.is_meta:
            return
        try:
            storage = tensor.untyped_storage()
        except (RuntimeError, NotImplementedError):  # e.g. a functional tensor wrapper
            return
        ptr, size = storage.data_ptr(), storage.nbytes()
        if ptr == 0 or ptr in self._sizes:
            return
        self._sizes[ptr] = size
        self.current += size
        self.peak = max(self.peak, self.current)
        self._finalizers.append(weakref.finalize(storage, self._freed, ptr))

    def _freed(self, ptr: int) -> None:
        self.current -= self._sizes.pop(ptr, 0)

    def close(self) -> None:
        """Stop counting: no finalizer outlives the measurement."""
        for finalizer in self._finalizers:
            finalizer.detach()
        self._finalizers.clear()

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        for value in tree_flatten(out)[0]:
            if isinstance(value, torch.Tensor):
                self._track(value)
        return out


class PeakMemory:
    """The peak bytes of one measured stretch of a call (``peak`` after ``measure``)."""

    def __init__(self) -> None:
        self.peak = 0


def hand_back_cached(device: torch.device) -> None:
    """After a call, or a copy released or offloaded: on CUDA, return the caching
    allocator's free blocks to the device. The next call may be another role's, or
    vLLM's engine, which allocates outside this allocator's cache; the plan counts only
    what is live, not what torch keeps cached. (A no-op on CPU: freed tensors go back to
    the host allocator, or to the copy pool, at once.)"""
    if device.type == "cuda":
        torch.cuda.empty_cache()


@contextmanager
def measure_peak(device: torch.device) -> Iterator[PeakMemory]:
    """Measure the peak bytes allocated on ``device`` while the block runs."""
    result = PeakMemory()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        try:
            yield result
        finally:
            torch.cuda.synchronize(device)
            result.peak = int(torch.cuda.max_memory_allocated(device))
        return
    tracker = CpuAllocations()
    try:
        with tracker:
            yield result
    finally:
        tracker.close()
        result.peak = tracker.peak
