"""Padding never matters: inf/nan in padded positions change nothing, values or gradients."""

from __future__ import annotations

from types import ModuleType

import pytest
import torch

from rlhf_operator.api.algorithm import (
    GrpoParams,
    PpoParams,
    RemaxParams,
    RlooParams,
    SafeRlhfParams,
)
from rlhf_worker.algorithms import grpo, ppo, remax, rloo, safe_rlhf

B, T = 4, 5
LENGTHS = [5, 3, 1, 4]


def make_batch(num_values: int, garbage: float | None) -> tuple[dict, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    mask = torch.zeros(B, T)
    for row, n in enumerate(LENGTHS):
        mask[row, :n] = 1.0
    value_shape = (B, T, num_values) if num_values > 1 else (B, T)
    batch = {
        "mask": mask,
        "rewards": torch.rand(B, generator=gen),
        "costs": torch.rand(B, generator=gen),
        "greedy_rewards": torch.rand(B // 2, generator=gen),
        "gen_logprobs": -torch.rand(B, T, generator=gen) - 0.1,
        "ref_logprobs": -torch.rand(B, T, generator=gen) - 0.1,
        "values": torch.rand(value_shape, generator=gen),
    }
    new_logprobs = batch["gen_logprobs"] + 0.05 * torch.randn(B, T, generator=gen)
    new_values = batch["values"] + 0.1 * torch.randn(value_shape, generator=gen)
    if garbage is not None:
        pad = mask == 0
        for key in ("gen_logprobs", "ref_logprobs"):
            batch[key] = batch[key].masked_fill(pad, garbage)
        new_logprobs = new_logprobs.masked_fill(pad, garbage)
        value_pad = pad.unsqueeze(-1).expand(value_shape) if num_values > 1 else pad
        batch["values"] = batch["values"].masked_fill(value_pad, garbage)
        new_values = new_values.masked_fill(value_pad, garbage)
    return batch, new_logprobs, new_values


CASES = [
    (ppo, PpoParams(kl_coef=0.1, kl_estimator="k3", entropy_coef=0.0), 1),
    (grpo, GrpoParams(group_size=2), 1),
    (remax, RemaxParams(), 1),
    (rloo, RlooParams(group_size=2, kl_estimator="k2"), 1),
    (safe_rlhf, SafeRlhfParams(kl_coef=0.1), 2),
]


def run(module: ModuleType, params: object, num_values: int, garbage: float | None) -> dict:
    batch, new_logprobs, new_values = make_batch(num_values, garbage)
    adv = module.actor_advantages(batch, params, module.new_state(params), 2)
    new_logprobs.requires_grad_(True)
    actor = module.actor_loss(new_logprobs, batch, adv.advantages, params)
    actor.loss.backward()
    out = {"advantages": adv.advantages, "actor": actor.loss, "actor_grad": new_logprobs.grad}
    if hasattr(module, "critic_loss"):
        new_values.requires_grad_(True)
        critic = module.critic_loss(new_values, batch, adv.returns, params)
        critic.loss.backward()
        out |= {"returns": adv.returns, "critic": critic.loss, "critic_grad": new_values.grad}
    return out


@pytest.mark.parametrize(("module", "params", "num_values"), CASES, ids=[c[0].NAME for c in CASES])
@pytest.mark.parametrize("garbage", [float("inf"), float("-inf"), float("nan"), 1e30])
def test_padding_is_ignored(
    module: ModuleType, params: object, num_values: int, garbage: float
) -> None:
    clean = run(module, params, num_values, None)
    dirty = run(module, params, num_values, garbage)
    for key, expected in clean.items():
        got = dirty[key]
        assert torch.isfinite(got).all(), key
        assert torch.allclose(got, expected, atol=1e-6), key
    mask = make_batch(num_values, None)[0]["mask"]
    assert (dirty["advantages"][mask == 0] == 0).all()
    assert (dirty["actor_grad"][mask == 0] == 0).all()


@pytest.mark.parametrize(("module", "params", "num_values"), CASES, ids=[c[0].NAME for c in CASES])
def test_every_algorithm_reports_reward_and_kl(
    module: ModuleType, params: object, num_values: int
) -> None:
    batch, _, _ = make_batch(num_values, None)
    metrics = module.actor_advantages(batch, params, module.new_state(params), 2).metrics
    assert metrics["reward_mean"] == pytest.approx(float(batch["rewards"].mean()))
    assert metrics["kl"] != 0.0  # gen and ref log-probabilities differ
    assert all(isinstance(v, float) for v in metrics.values())
