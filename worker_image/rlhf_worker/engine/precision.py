"""Mixed precision for a trained role: compute weights in the job dtype, fp32 everything else.

A role trained in bf16 (or fp16) keeps three things per shard, as Megatron and
torch's FSDP ``MixedPrecisionPolicy(param_dtype=bf16, reduce_dtype=fp32)`` do:

- the *compute weights*: the module's parameters, in the job dtype. Forward,
  backward, reallocation and generation see only these;
- the *master weights*: an fp32 copy the optimizer updates. An AdamW step at the
  learning rates RLHF uses (1e-6) is far below a bf16 weight's resolution (about
  1e-4 at 0.02), so updating the bf16 weights directly would mostly round to
  nothing; the compute weights are copied from the master weights after each step
  (rounded once);
- the *gradients*: fp32, accumulated over micro-batches. Autograd leaves each
  micro-batch's gradient in ``param.grad`` in the job dtype; a post-accumulate hook
  adds it into the fp32 buffer at once and drops it, so the sum over micro-batches
  (and the reduction over dp that follows) is never rounded to bf16.

In float32 the three are one: the master weights are the parameters and the
gradients their ``.grad``, so nothing is copied or hooked and a float32 run is
exactly what it was before mixed precision existed.

Written here rather than taken from FSDP2's ``fully_shard``: a role's shards are
the project's own layouts (tp slices, pipeline stages, storage order) that
reallocation moves in place, and the optimizer state is checkpointed by
Hugging Face name; FSDP would own the parameters' storage and their sharding.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
from torch import Tensor, nn


class MixedPrecision:
    """The master weights and fp32 gradients of one rank's shards of a trained role."""

    def __init__(self, params: Mapping[str, nn.Parameter]) -> None:
        self.params = dict(params)
        self.enabled = any(p.dtype != torch.float32 for p in self.params.values())
        self.master: dict[str, Tensor] = (
            {name: p.detach().float().clone() for name, p in self.params.items()}
            if self.enabled
            else dict(self.params)
        )
        # Between the first backward of a step and the optimizer step: the fp32 sums.
        self._grads: dict[str, Tensor] | None = None
        if self.enabled:
            for name, param in self.params.items():
                param.register_post_accumulate_grad_hook(self._hook(name))

    def _hook(self, name: str) -> Callable[[Tensor], None]:
        def accumulate(param: Tensor) -> None:
            assert self._grads is not None and param.grad is not None
            self._grads[name].add_(param.grad)  # fp32 += bf16, exactly
            param.grad = None

        return accumulate

    def start_step(self) -> None:
        """Before a step's first backward: no gradient from an earlier step survives."""
        for param in self.params.values():
            param.grad = None
        if self.enabled:
            self._grads = {name: torch.zeros_like(w) for name, w in self.master.items()}

    def grads(self) -> dict[str, Tensor]:
        """The step's gradients (fp32 where the weights are not): zeros for a shard the batch
        did not reach."""
        if self.enabled:
            assert self._grads is not None, "start_step was not called"
            return self._grads
        for param in self.params.values():
            if param.grad is None:
                param.grad = torch.zeros_like(param)
        return {name: p.grad for name, p in self.params.items() if p.grad is not None}

    @torch.no_grad()
    def finish_step(self) -> None:
        """After the optimizer updated the master weights: the compute weights follow them,
        and the fp32 gradients are freed (generation runs next, on the same devices)."""
        if not self.enabled:
            return
        for name, param in self.params.items():
            param.copy_(self.master[name])
        self._grads = None

    @torch.no_grad()
    def load_master(self, weights: Mapping[str, Tensor]) -> None:
        """Set the master weights (a checkpoint's), and the compute weights from them."""
        for name, weight in weights.items():
            self.master[name].copy_(weight)
        self.finish_step()
