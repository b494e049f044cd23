"""One training step under a layout: forward and backward through the pipeline,
gradients summed over dp, clipped by the whole model's norm, then AdamW.

The optimizer belongs to this layout's shards (the training layout owns it), and
each dp replica owns 1/dp of its state (``shards.py``: fp32 master weights,
moments and gradients; ZeRO-1, or ZeRO-2 when the plan says so). AdamW is
element-wise, so sharded AdamW on exact gradients is exactly the single-process
AdamW.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor

from rlhf_worker.engine.adamw import AdamWState, adamw_step
from rlhf_worker.engine.forward import Output, hidden_shape, split_batch, stage_fn
from rlhf_worker.engine.shards import OptimizerShards
from rlhf_worker.model.decoder import Decoder
from rlhf_worker.parallel.data import clip_grads, global_grad_norm, tied_embedding_grads
from rlhf_worker.parallel.pipeline import broadcast_from_last, pipeline_forward_backward

# (log-probabilities [b, T-1] or values [b, T] of one micro-batch, that micro-batch) ->
# its contribution to the global loss (a scalar).
LossFn = Callable[[Tensor, Mapping[str, Tensor]], Tensor]


@dataclass(frozen=True)
class OptimizerConfig:
    lr: float = 1e-5
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = 1e-8
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0  # <= 0: no clipping


@dataclass(frozen=True)
class TrainStats:
    loss: float  # the global loss: summed over micro-batches and dp replicas
    grad_norm: float  # the whole model's gradient norm before clipping


class Trainer:
    """A model's training copy: its shards and this dp replica's chunks of their master
    weights and AdamW state (by name)."""

    def __init__(self, model: Decoder, config: OptimizerConfig, output: Output = "logprobs"):
        self.model = model
        self.config = config
        self.output: Output = output
        self.optimizer = AdamWState()  # moments shaped like `master`'s chunks
        self.shards = OptimizerShards(model.local_state(), model.ctx)

    @property
    def master(self) -> dict[str, Tensor]:
        """The fp32 weights this rank's optimizer updates: its dp chunk of each shard,
        flattened (the whole shard, flattened, at dp = 1)."""
        return self.shards.master

    def step(
        self,
        batch: Mapping[str, Tensor],
        loss_fn: LossFn,
        micro_batches: int = 1,
        recompute: bool = False,
        shard_grads: bool = False,
    ) -> TrainStats:
        """One optimizer step on this dp replica's batch, recomputing each layer's
        activations in the backward if ``recompute`` and keeping only this replica's chunk
        of the gradients if ``shard_grads`` (ZeRO-2): the plan's choices for the call.
        No gradient outlives the step."""
        model, ctx = self.model, self.model.ctx
        self.shards.start_step(shard_grads)
        losses = pipeline_forward_backward(
            ctx,
            split_batch(batch, micro_batches),
            stage_fn(model, self.output, recompute),
            loss_fn,
            hidden_shape(model),
            model.dtype,
            model.device,
        )
        grads = self.shards.grads()
        tied_embedding_grads(grads, model.config.shape, ctx)
        norm = global_grad_norm(grads, model.config.shape, ctx)
        if self.config.max_grad_norm > 0:
            clip_grads(grads, norm, self.config.max_grad_norm)
        cfg = self.config
        adamw_step(self.master, grads, self.optimizer, cfg.lr, cfg.betas, cfg.eps, cfg.weight_decay)
        del grads  # views of the gradient buffer, which finish_step frees
        self.shards.finish_step()
        loss = (
            torch.stack(losses).sum().double()
            if losses
            else torch.zeros((), dtype=torch.float64, device=model.device)
        )
        loss = broadcast_from_last(ctx, loss.reshape(1))
        if ctx.dp_group is not None:
            dist.all_reduce(loss, group=ctx.dp_group)
        return TrainStats(loss=float(loss.item()), grad_norm=norm)
