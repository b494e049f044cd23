"""AdamW over a dict of named shards, with its state in plain named tensors.

The same update as ``torch.optim.AdamW`` (decoupled weight decay, bias
correction), written out because (1) the state is keyed by Hugging Face name
and shaped like the shards, so it can be checkpointed and resharded exactly
like the parameters, and (2) the first ``torch.optim`` step imports
``torch._dynamo``, which costs seconds in every worker process.
AdamW is element-wise: on exact gradients, sharded AdamW is the full one. The
moments take the dtype and shape of the weights they update: a dp replica's fp32
chunks of the master weights (``shards.py``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
from torch import Tensor


@dataclass
class AdamWState:
    step: int = 0
    exp_avg: dict[str, Tensor] = field(default_factory=dict)
    exp_avg_sq: dict[str, Tensor] = field(default_factory=dict)


@torch.no_grad()
def adamw_step(
    weights: Mapping[str, Tensor],
    grads: Mapping[str, Tensor],
    state: AdamWState,
    lr: float,
    betas: tuple[float, float],
    eps: float,
    weight_decay: float,
) -> None:
    """One AdamW update of every weight that has a gradient (in place)."""
    beta1, beta2 = betas
    state.step += 1
    step_size = lr / (1 - beta1**state.step)
    bias_correction2_sqrt = math.sqrt(1 - beta2**state.step)
    for name, param in weights.items():
        grad = grads.get(name)
        if grad is None:
            continue
        if name not in state.exp_avg:
            state.exp_avg[name] = torch.zeros_like(param)
            state.exp_avg_sq[name] = torch.zeros_like(param)
        exp_avg, exp_avg_sq = state.exp_avg[name], state.exp_avg_sq[name]
        param.mul_(1 - lr * weight_decay)
        exp_avg.lerp_(grad, 1 - beta1)
        exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        # One temporary the size of the weight (the estimator's AdamW term), not two.
        denom = exp_avg_sq.sqrt().div_(bias_correction2_sqrt).add_(eps)
        param.addcdiv_(exp_avg, denom, value=-step_size)
