"""Device discipline: every tensor the data path makes is on the runtime's device.

On a GPU worker a tensor made without a device lands in host memory, and the first
op that meets it with a CUDA tensor fails ("Expected all tensors to be on the same
device"), or NCCL refuses it in a send. CI machines have no GPU: there every
tensor is on the host and such a mix cannot show. `DeviceChecks` makes it show
anyway. It is a `TorchFunctionMode` that, while active,

- refuses a tensor factory (``torch.arange``, ``zeros``, ``full``, ``tensor``...)
  called without a ``device``: on CPU that is where a host tensor sneaks in. A
  host tensor the code means to have says ``device="cpu"``;
- refuses an op whose tensor arguments sit on more than one device (0-dim host
  tensors aside, which torch itself accepts as scalars): what a GPU run would hit.

The worker runs its data path (calls, data moves, reallocation) under it when
``RLHF_DEVICE_CHECKS=1``; the test suite sets that for every job it runs. A
TorchFunctionMode sees the Python-level torch API only, and not what torch's own
functions do inside (the mode is off while one runs), so library internals are
not second-guessed. Off (the default in production) it costs nothing.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_leaves

ENV = "RLHF_DEVICE_CHECKS"

# The factories whose result is on the host unless told otherwise. The `*_like`
# and `Tensor.new_*` ones follow their argument and are fine.
FACTORIES = {
    torch.arange,
    torch.as_tensor,
    torch.asarray,
    torch.empty,
    torch.empty_strided,
    torch.eye,
    torch.full,
    torch.linspace,
    torch.logspace,
    torch.normal,
    torch.ones,
    torch.rand,
    torch.randint,
    torch.randn,
    torch.randperm,
    torch.scalar_tensor,
    torch.tensor,
    torch.tril_indices,
    torch.triu_indices,
    torch.zeros,
}
# Of these, the ones that keep a tensor argument's device (torch.arange(t) does not).
KEEP_A_TENSOR_S_DEVICE = {torch.tensor, torch.as_tensor, torch.asarray}


class DeviceError(RuntimeError):
    """A tensor off the runtime's device in the data path; says where it was made."""


def enabled() -> bool:
    return os.environ.get(ENV, "") not in ("", "0")


PACKAGE = str(Path(__file__).resolve().parent.parent)  # rlhf_worker/
_TORCH = str(Path(torch.__file__).resolve().parent)


def _caller() -> str | None:
    """file:line of the project's frame that called torch, or None if a library did.

    Only the project's own code is held to the rule: vLLM, transformers and
    torch make host tensors of their own on purpose (and know their devices).
    """
    frame = sys._getframe(2)
    while frame is not None:
        name = frame.f_code.co_filename
        if name.startswith(PACKAGE):
            if not name.endswith("devices.py"):
                return f"{name}:{frame.f_lineno}"
        elif not name.startswith(_TORCH):
            return None  # a library's code, not ours
        frame = frame.f_back  # type: ignore[assignment]
    return None


def _name(func: Any) -> str:
    return getattr(func, "__name__", None) or repr(func)


class DeviceChecks(TorchFunctionMode):
    """Refuses implicit host tensors and ops that mix devices (see the module docstring)."""

    def __torch_function__(
        self,
        func: Any,
        types: Any,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> Any:
        kwargs = kwargs or {}
        where = _caller()
        if where is None:
            return func(*args, **kwargs)
        # torch.tensor(t) of a tensor keeps its device; anything else is the host's.
        of_tensor = (
            func in KEEP_A_TENSOR_S_DEVICE and bool(args) and isinstance(args[0], torch.Tensor)
        )
        if func in FACTORIES and kwargs.get("device") is None and not of_tensor:
            raise DeviceError(
                f"torch.{_name(func)}() without a device at {where}: it makes a host"
                " tensor (pass device=, or device='cpu' for one meant to be on the host)"
            )
        if func is torch.from_numpy:
            raise DeviceError(
                f"torch.from_numpy() at {where}: always a host tensor; use"
                " torch.as_tensor(array, device=...)"
            )
        devices = {
            leaf.device
            for leaf in tree_leaves((args, kwargs))
            if isinstance(leaf, torch.Tensor)
            and not (leaf.dim() == 0 and leaf.device.type == "cpu")
        }
        if len(devices) > 1 and _name(func) not in _CROSS_DEVICE:
            names = ", ".join(sorted(str(d) for d in devices))
            raise DeviceError(f"{_name(func)} mixes tensors on {names} at {where}")
        return func(*args, **kwargs)


# Ops meant to take a tensor from one device to another.
_CROSS_DEVICE = {"copy_", "to", "set_"}


@contextmanager
def device_checks(on: bool | None = None) -> Iterator[None]:
    """Run the body under `DeviceChecks` if `on` (default: if ``RLHF_DEVICE_CHECKS`` is set)."""
    if not (enabled() if on is None else on):
        yield
        return
    with DeviceChecks():
        yield
