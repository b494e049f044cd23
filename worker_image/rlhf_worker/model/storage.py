"""How a shard is laid out in memory: row-major, or column-major for row-parallel weights.

The convention is fixed in the contract (``contract.sharding.ParamSpec.column_major``);
this module is the torch side of it. Loading a checkpoint (``in_storage_order``) and
reallocation (``empty_shard``) make shards in their order, and a shard keeps it
for its whole life: the trainer's gradients and optimizer states follow the
parameter's strides (torch's gradient layout contract and ``zeros_like``), and
offloading's host copies are made with ``empty_like``, which keeps them too.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

Allocate = Callable[[tuple[int, ...], torch.dtype, torch.device | str], torch.Tensor]


def empty_shard(
    shape: tuple[int, ...],
    dtype: torch.dtype,
    device: torch.device | str,
    column_major: bool,
    alloc: Allocate | None = None,
) -> torch.Tensor:
    """An uninitialised shard of ``shape`` in the given order (allocated by ``alloc``)."""
    make = alloc or _torch_empty
    if column_major:
        return make(tuple(reversed(shape)), dtype, device).t()
    return make(shape, dtype, device)


def in_storage_order(tensor: torch.Tensor, column_major: bool) -> torch.Tensor:
    """The tensor in the given order: itself if it already is, else a copy."""
    if column_major:
        return tensor if tensor.t().is_contiguous() else tensor.t().contiguous().t()
    return tensor.contiguous()


def wire_view(view: torch.Tensor, column_major: bool) -> torch.Tensor:
    """How a region of a shard travels in a message: row by row of its memory order.

    Both ends of a reallocation agree on it from the parameter alone, whatever
    order their own tensors are in; where a tensor is in that order the region's
    wire view is contiguous and goes straight from or into it.
    """
    return view.t() if column_major else view


def flat_view(tensor: torch.Tensor, column_major: bool) -> torch.Tensor | None:
    """The tensor's elements as one flat view in the given order, or None if its memory is
    not one block in that order (then regions of it have to be packed to travel)."""
    ordered = wire_view(tensor, column_major)
    return ordered.view(-1) if ordered.is_contiguous() else None


def _torch_empty(
    shape: tuple[int, ...], dtype: torch.dtype, device: torch.device | str
) -> torch.Tensor:
    return torch.empty(shape, dtype=dtype, device=device)
