"""AdamW over a dict of named shards, with its state in plain named tensors.

The same update as ``torch.optim.AdamW`` (decoupled weight decay, bias
correction), written out because (1) the state is keyed by Hugging Face name
and shaped like the shards, so it can be checkpointed and resharded exactly
like the parameters, and (2) the first ``torch.optim`` step imports
``torch._dynamo``, which costs seconds in every worker process.
AdamW is element-wise: on exact gradients, sharded AdamW is the full one.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn


@dataclass
class AdamWState:
    step: int = 0
    exp_avg: dict[str, Tensor] = field(default_factory=dict)
    exp_avg_sq: dict[str, Tensor] = field(default_factory=dict)


@torch.no_grad()
def adamw_step(
    params: Mapping[str, nn.Parameter],
    state: AdamWState,
    lr: float,
    betas: tuple[float, float],
    eps: float,
    weight_decay: float,
) -> None:
    """One AdamW update of every parameter that has a gradient."""
    beta1, beta2 = betas
    state.step += 1
    step_size = lr / (1 - beta1**state.step)
    bias_correction2_sqrt = math.sqrt(1 - beta2**state.step)
    for name, param in params.items():
        grad = param.grad
        if grad is None:
            continue
        if name not in state.exp_avg:
            state.exp_avg[name] = torch.zeros_like(param)
            state.exp_avg_sq[name] = torch.zeros_like(param)
        exp_avg, exp_avg_sq = state.exp_avg[name], state.exp_avg_sq[name]
        param.mul_(1 - lr * weight_decay)
        exp_avg.lerp_(grad, 1 - beta1)
        exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        denom = (exp_avg_sq.sqrt() / bias_correction2_sqrt).add_(eps)
        param.addcdiv_(exp_avg, denom, value=-step_size)
