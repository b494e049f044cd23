"""A trained role's optimizer state, sharded over data parallelism (ZeRO-1 and ZeRO-2).

Every rank of a training layout keeps, for its own parameter shards:

- the *compute weights*: the module's parameters, in the job dtype (bf16 on a GPU).
  Forward, backward, reallocation and generation see only these;
- *1/dp of the fp32 master weights and of the AdamW moments*: 12 bytes per parameter
  over dp (ZeRO-1). An AdamW step at the learning rates RLHF uses (1e-6) is far below a
  bf16 weight's resolution (about 1e-4 at 0.02), so the optimizer updates fp32 master
  weights and the compute weights are copied from them after the step (rounded once);
- *fp32 gradients*, accumulated over micro-batches and reduced over dp in fp32: all of
  them until the step's reduce-scatter (ZeRO-1), or only this rank's 1/dp, each
  micro-batch's gradient reduce-scattered as soon as autograd produces it (ZeRO-2: less
  memory, one collective per parameter per micro-batch). Autograd leaves a gradient in
  ``param.grad`` in the job dtype; a post-accumulate hook moves it into the fp32 buffer at
  once and drops it, so nothing is ever summed in bf16 and nothing outlives the step.

The same holds in float32 (the master weights are then a copy in the same dtype): one
code path, one memory model (``planner/estimator.py`` counts exactly these buffers).

How a parameter is split over dp: its flattened elements are padded to a multiple of dp
and cut into dp equal chunks; replica ``d`` owns chunk ``d`` of *every* parameter.
The chunks are laid out rank-major in one flat buffer ``[dp, C]`` (``C`` = the sum of a
rank's chunk lengths), so ZeRO-1 reduces the step's fp32 gradients in one
reduce-scatter, and every state tensor is still a named per-parameter view
(checkpoints and AdamW key it by Hugging Face name). The updated weights come back by
one ``all_gather_single`` per tensor, into the parameters. Padding costs at most dp - 1
elements per parameter. On NCCL the reduce-scatter is ``reduce_scatter_single``; on
gloo (CPU) an all-reduce in place and a copy of this rank's row, the same sums without
the staging copy gloo's reduce-scatter makes of its whole input.

Written here rather than taken from FSDP2's ``fully_shard(mp_policy=...)``: a role's
shards are the project's own layouts (tp slices, pipeline stages, tied embeddings on two
stages) that reallocation reads and writes in place as plain tensors by name, and
FSDP2 would own the parameters' storage and sharding (DTensor parameters, unsharded only
inside its forward), which reallocation and the vLLM weight sync would have to undo
around every call.
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor, nn

from rlhf_worker.parallel.groups import ParallelContext


@dataclass(frozen=True)
class Chunk:
    """Where a parameter's dp chunks sit in the rank-major flat buffers."""

    numel: int  # the parameter's elements
    size: int  # elements per chunk: ceil(numel / dp)
    offset: int  # the chunk's start in a rank's row of the flat buffer


def chunk_layout(numels: Mapping[str, int], dp: int) -> tuple[dict[str, Chunk], int]:
    """Each parameter's chunk (pure) and the length of one rank's row."""
    chunks, offset = {}, 0
    for name, numel in numels.items():
        size = math.ceil(numel / dp)
        chunks[name] = Chunk(numel, size, offset)
        offset += size
    return chunks, offset


class OptimizerShards:
    """One rank's master-weight, moment and gradient shards of a trained role."""

    def __init__(self, params: Mapping[str, nn.Parameter], ctx: ParallelContext) -> None:
        self.params = dict(params)
        self.group = ctx.dp_group
        self.dp = ctx.dp
        # Replica d owns chunk d. The collectives number a group's members by ascending
        # global rank, so chunk d sits in row slot[d] of the flat buffers.
        replicas = ctx.layout.dp_group(ctx.stage, ctx.tp_rank)
        self.owner = ctx.dp_rank
        self.slot = [sorted(replicas).index(r) for r in replicas]
        self.gloo = self.group is not None and dist.get_backend(self.group) == "gloo"
        first = next(iter(self.params.values()))
        self.dtype, self.device = first.dtype, first.device
        self.chunks, self.row = chunk_layout(
            {n: p.numel() for n, p in self.params.items()}, self.dp
        )
        self._master_flat = torch.zeros(self.row, dtype=torch.float32, device=self.device)
        self.master = self._views(self._master_flat)  # name -> this rank's fp32 chunk
        with torch.no_grad():
            for name, param in self.params.items():
                self._own_chunk(param.detach().reshape(-1), name, self.master[name])
        # Between a step's first backward and its optimizer step: the fp32 sums.
        self._full: Tensor | None = None  # ZeRO-1 at dp > 1: every rank's chunks, [dp, row]
        self._grad_flat: Tensor | None = None  # this rank's chunks, [row]
        for name, param in self.params.items():
            param.register_post_accumulate_grad_hook(self._hook(name))

    @property
    def stepping(self) -> bool:
        """Between ``start_step`` and ``finish_step``: gradient buffers exist."""
        return self._full is not None or self._grad_flat is not None

    def _views(self, flat: Tensor) -> dict[str, Tensor]:
        return {n: flat[c.offset : c.offset + c.size] for n, c in self.chunks.items()}

    def _pieces(self, flat: Tensor, c: Chunk) -> list[tuple[int, Tensor]]:
        """A flattened parameter's chunks (views; the last may be short or missing), each
        with its row in the flat buffers."""
        return [
            (self.slot[d], flat[d * c.size : min((d + 1) * c.size, c.numel)])
            for d in range(self.dp)
            if d * c.size < c.numel
        ]

    def _own_chunk(self, flat: Tensor, name: str, out: Tensor) -> None:
        """Copy this rank's chunk of a flattened parameter into ``out`` (zero padding)."""
        c = self.chunks[name]
        start = self.owner * c.size
        piece = flat[start : min(start + c.size, c.numel)]
        out.zero_()
        out[: piece.numel()].copy_(piece)

    # -- gradients -------------------------------------------------------------------------

    def _hook(self, name: str) -> Callable[[Tensor], None]:
        # Through a weak reference: the parameter keeps its hooks, and a hook holding this
        # object would make a cycle through the parameter that the garbage collector does
        # not see (torch does not traverse a tensor's hooks), so no model would ever be freed.
        owner = weakref.ref(self)

        def accumulate(param: Tensor) -> None:
            shards = owner()
            if shards is not None:
                shards._accumulate(name, param)

        return accumulate

    def _accumulate(self, name: str, param: Tensor) -> None:
        assert param.grad is not None and self.stepping, "start_step was not called"
        grad = param.grad.reshape(-1)
        c = self.chunks[name]
        if self._full is not None:  # ZeRO-1: into every rank's chunk, reduced at the end
            block = self._full[:, c.offset : c.offset + c.size]
            for row, piece in self._pieces(grad, c):
                block[row, : piece.numel()].add_(piece)  # fp32 += job dtype, exactly
        else:  # ZeRO-2 (or dp = 1): this micro-batch's gradient, reduced now
            assert self._grad_flat is not None
            mine = self._grad_flat[c.offset : c.offset + c.size]
            if self.dp == 1:
                mine.add_(grad)
            else:
                padded = torch.zeros(self.dp, c.size, dtype=torch.float32, device=grad.device)
                for row, piece in self._pieces(grad, c):
                    padded[row, : piece.numel()].copy_(piece)
                mine.add_(self._reduce_scatter(padded))
        param.grad = None

    def _reduce_scatter(self, rows: Tensor) -> Tensor:
        """This rank's row of the sum of every replica's ``rows`` [dp, n] (a new tensor).

        gloo's reduce-scatter stages a second copy of its whole input (measured: 4N
        more bytes at dp = 2); an all-reduce in place and a copy of one row gives the
        same sums with only the row as extra memory, the exact fallback on CPU."""
        if self.gloo:
            dist.all_reduce(rows, group=self.group)
            return rows[self.slot[self.owner]].clone()
        out = torch.empty(rows.shape[1], dtype=rows.dtype, device=rows.device)
        dist.reduce_scatter_single(out, rows.view(-1), group=self.group)
        return out

    def start_step(self, shard_grads: bool = False) -> None:
        """Before a step's first backward: fresh fp32 gradient buffers (ZeRO-2: only this
        rank's chunks)."""
        for param in self.params.values():
            param.grad = None
        fp32, device = torch.float32, self.device
        if shard_grads or self.dp == 1:
            self._full = None
            self._grad_flat = torch.zeros(self.row, dtype=fp32, device=device)
        else:
            self._full = torch.zeros(self.dp, self.row, dtype=fp32, device=device)
            self._grad_flat = None

    def grads(self) -> dict[str, Tensor]:
        """This rank's chunks of the step's gradients, summed over micro-batches and dp."""
        assert self.stepping, "start_step was not called"
        if self._full is not None:  # ZeRO-1: the one reduce-scatter of the step
            self._grad_flat = self._reduce_scatter(self._full)
            self._full = None
        assert self._grad_flat is not None
        return self._views(self._grad_flat)

    # -- weights ---------------------------------------------------------------------------

    @torch.no_grad()
    def finish_step(self) -> None:
        """After the optimizer updated the master chunks: every rank's compute weights
        become the gathered master weights (rounded once to the job dtype), and the
        gradients are freed (generation runs next, on the same devices; the caller drops
        its views of them first)."""
        self._grad_flat = None
        self._full = None
        self.gather_weights()

    @torch.no_grad()
    def gather_weights(self) -> None:
        """Every compute weight from the dp replicas' master chunks: one all-gather per
        tensor, so the transient is one tensor's chunks rather than a second copy of the
        weights (the collective's latency is small beside the step)."""
        for name, param in self.params.items():
            c, mine = self.chunks[name], self.master[name]
            if self.dp == 1:
                block = mine.view(1, c.size)  # copy_ rounds to the job dtype in place
            else:
                block = torch.empty(self.dp, c.size, dtype=self.dtype, device=self.device)
                dist.all_gather_single(block.view(-1), mine.to(self.dtype), group=self.group)
            # A column-major shard (`model/storage.py`) is not contiguous: through a copy.
            flat = param.data.view(-1) if param.is_contiguous() else param.data.flatten()
            for row, piece in self._pieces(flat, c):
                piece.copy_(block[row, : piece.numel()])
            if not param.is_contiguous():
                param.data.copy_(flat.view(param.shape))

    @torch.no_grad()
    def load_master(self, chunks: Mapping[str, Tensor]) -> None:
        """Set this rank's master chunks (a checkpoint's) and every compute weight from
        them. A collective over dp: every replica of the layout calls it."""
        for name, chunk in chunks.items():
            self.master[name].copy_(chunk)
        self.gather_weights()
