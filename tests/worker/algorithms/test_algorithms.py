"""Each algorithm's advantages and losses against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch

from rlhf_operator.api.algorithm import (
    GrpoParams,
    PpoParams,
    RemaxParams,
    RlooParams,
    SafeRlhfParams,
)
from rlhf_operator.api.dataflow import calls_for
from rlhf_worker import algorithms
from rlhf_worker.algorithms import core, grpo, ppo, remax, rloo, safe_rlhf


def f64(*rows: list[float]) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float64)


def test_every_algorithm_states_its_calls_from_the_api() -> None:
    for name, module in algorithms.ALGORITHMS.items():
        assert name == module.NAME
        assert calls_for(name) == module.CALLS
        assert algorithms.for_name(name) is module
        state = module.new_state(module.Params())
        state.load_state_dict(state.state_dict())
    assert {c.name for c in ppo.CALLS} >= {"critic_inf", "critic_train"}
    assert "cost_inf" in {c.name for c in safe_rlhf.CALLS}
    assert "reward_greedy_inf" in {c.name for c in remax.CALLS}
    with pytest.raises(ValueError, match="unknown algorithm 'dpo'"):
        algorithms.for_name("dpo")


# ---------------------------------------------------------------- GRPO


def test_grpo_group_normalisation() -> None:
    rewards = torch.tensor([1.0, 2.0, 3.0, 5.0, 5.0, 5.0])
    adv = grpo.group_advantages(rewards, 3, normalize_std=True)
    # Group 1: mean 2, unbiased std 1. Group 2: all equal -> 0, not nan.
    assert adv.tolist() == pytest.approx([-1.0, 0.0, 1.0, 0.0, 0.0, 0.0], abs=1e-6)
    two = grpo.group_advantages(torch.tensor([0.0, 4.0]), 2, normalize_std=True)
    # Centred +-2, unbiased std sqrt(8).
    assert two.tolist() == pytest.approx([-2 / math.sqrt(8), 2 / math.sqrt(8)], rel=1e-6)
    # Dr. GRPO: centred only.
    dr = grpo.group_advantages(torch.tensor([0.0, 4.0, 1.0, 1.0]), 2, normalize_std=False)
    assert dr.tolist() == [-2.0, 2.0, 0.0, 0.0]


def test_groups_of_identical_rewards_get_no_advantage() -> None:
    # The float32 mean of six rewards of 17.3 is a rounding step off 17.3 and the std 0 or
    # 3e-8: that gave +-190 on every token. Now exactly 0, and counted.
    same = torch.full((12,), 17.3)
    assert grpo.group_advantages(same, 6, normalize_std=True).tolist() == [0.0] * 12
    assert grpo.group_advantages(torch.full((16,), 0.1), 16, True).tolist() == [0.0] * 16
    # Rewards that differ, even slightly against a large scale, are still centred.
    kept = grpo.group_advantages(torch.tensor([1000.0, 1000.01]), 2, normalize_std=True)
    assert kept[0] < 0 < kept[1]
    mask = torch.ones(4, 2)
    batch = {"mask": mask, "rewards": torch.tensor([17.3, 17.3, 0.0, 1.0])}
    out = grpo.actor_advantages(batch, GrpoParams(group_size=2), core.NoState(), 2)
    assert out.metrics["zero_std_fraction"] == 0.5
    assert out.advantages[:2].abs().max() == 0


def test_grpo_advantages_are_per_token_and_zero_on_padding() -> None:
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    batch = {"mask": mask, "rewards": torch.tensor([0.0, 1.0])}
    out = grpo.actor_advantages(batch, GrpoParams(group_size=2), core.NoState(), 2)
    s = 1 / math.sqrt(2)
    assert torch.allclose(out.advantages, torch.tensor([[-s, -s, 0.0], [s, 0.0, 0.0]]), atol=1e-6)
    assert out.returns is None
    assert out.metrics["reward_mean"] == 0.5


def test_grpo_rejects_groups_that_do_not_fit() -> None:
    batch = {"mask": torch.ones(3, 2), "rewards": torch.zeros(3)}
    with pytest.raises(ValueError, match="3 samples is not a whole number of groups of 2"):
        grpo.actor_advantages(batch, GrpoParams(), core.NoState(), 2)
    with pytest.raises(ValueError, match="at least 2 samples per prompt"):
        grpo.actor_advantages(batch, GrpoParams(), core.NoState(), 1)


def test_grpo_loss_adds_the_kl_in_the_loss() -> None:
    mask = f64([1.0, 1.0], [1.0, 0.0])
    gen = f64([-1.0, -1.0], [-1.0, 0.0])
    ref = f64([-2.0, -1.0], [-1.0, 0.0])
    adv = f64([1.0, 1.0], [-1.0, 0.0])
    batch = {"mask": mask, "gen_logprobs": gen, "ref_logprobs": ref}
    params = GrpoParams(kl_coef=0.5, kl_estimator="k3", loss_aggregation="token-mean")
    out = grpo.actor_loss(gen.clone(), batch, adv, params)
    # ratio 1: surrogate = -A per token; k3 with d = 1 on the first token: e^-1 - 1 + 1.
    k3 = math.exp(-1.0)
    expected = ((-1.0 + 0.5 * k3) + (-1.0) + (1.0)) / 3
    assert out.loss.item() == pytest.approx(expected)
    assert out.metrics["kl"] == pytest.approx(k3 / 2)
    seq = grpo.actor_loss(
        gen.clone(), batch, adv, params.model_copy(update={"loss_aggregation": "sequence-mean"})
    )
    assert seq.loss.item() == pytest.approx((((-1.0 + 0.5 * k3) - 1.0) / 2 + 1.0) / 2)
    no_kl = grpo.actor_loss(gen.clone(), batch, adv, params.model_copy(update={"kl_coef": 0.0}))
    assert no_kl.loss.item() == pytest.approx(-1 / 3)
    assert "kl" not in no_kl.metrics


# ---------------------------------------------------------------- RLOO


def test_rloo_leave_one_out_baseline() -> None:
    adv = rloo.leave_one_out(torch.tensor([1.0, 2.0, 3.0, 6.0, 0.0, 2.0]), 2)
    assert adv.tolist() == pytest.approx([-1.0, 1.0, -3.0, 3.0, -2.0, 2.0])
    four = rloo.leave_one_out(torch.tensor([1.0, 2.0, 3.0, 6.0]), 4)
    # 1 - (2+3+6)/3, 2 - (1+3+6)/3, 3 - (1+2+6)/3, 6 - (1+2+3)/3
    assert four.tolist() == pytest.approx([-8 / 3, -4 / 3, 0.0, 4.0])


def test_rloo_subtracts_the_sequence_kl_from_the_score() -> None:
    mask = torch.tensor([[1.0, 1.0], [1.0, 0.0]])
    batch = {
        "mask": mask,
        "rewards": torch.tensor([1.0, 1.0]),
        "gen_logprobs": torch.tensor([[-1.0, -1.0], [-1.0, -5.0]]),
        "ref_logprobs": torch.tensor([[-2.0, -2.0], [-1.0, 0.0]]),
    }
    out = rloo.actor_advantages(
        batch, RlooParams(kl_coef=0.1, kl_estimator="k1"), core.NoState(), 2
    )
    # Scores: 1 - 0.1 * 2 = 0.8 and 1 - 0 (padding's KL is ignored) = 1.
    assert torch.allclose(out.advantages, torch.tensor([[-0.2, -0.2], [0.2, 0.0]]))
    assert out.metrics["kl"] == pytest.approx(1.0)


# ---------------------------------------------------------------- ReMax


def test_remax_baseline_is_the_greedy_reward_of_the_prompt() -> None:
    mask = torch.tensor([[1.0, 1.0], [1.0, 0.0], [1.0, 1.0], [1.0, 1.0]])
    batch = {
        "mask": mask,
        "rewards": torch.tensor([1.0, 3.0, 0.0, 0.5]),
        "greedy_rewards": torch.tensor([2.0, 0.5]),
        "gen_logprobs": torch.zeros(4, 2),
    }
    out = remax.actor_advantages(batch, RemaxParams(kl_coef=0.0), core.NoState(), 2)
    expected = torch.tensor([[-1.0, -1.0], [1.0, 0.0], [-0.5, -0.5], [0.0, 0.0]])
    assert torch.allclose(out.advantages, expected)
    repeated = {**batch, "greedy_rewards": torch.tensor([2.0, 2.0, 0.5, 0.5])}
    assert torch.equal(
        remax.actor_advantages(repeated, RemaxParams(kl_coef=0.0), core.NoState(), 2).advantages,
        out.advantages,
    )
    with pytest.raises(ValueError, match="3 greedy rewards for 4 samples"):
        remax.greedy_baseline(torch.zeros(3), 4, 2)


def test_remax_kl_penalty_is_in_the_reward_to_go() -> None:
    batch = {
        "mask": torch.ones(1, 2),
        "rewards": torch.tensor([1.0]),
        "greedy_rewards": torch.tensor([0.0]),
        "gen_logprobs": torch.tensor([[-1.0, -1.0]]),
        "ref_logprobs": torch.tensor([[-2.0, -1.5]]),
    }
    out = remax.actor_advantages(batch, RemaxParams(kl_coef=0.1, kl_estimator="k1"), core.NoState())
    # Token rewards: -0.1, 1 - 0.05; reward-to-go 0.85, 0.95.
    assert torch.allclose(out.advantages, torch.tensor([[0.85, 0.95]]))


# ---------------------------------------------------------------- PPO


def _ppo_batch() -> dict[str, torch.Tensor]:
    return {
        "mask": f64([1.0, 1.0, 1.0, 0.0], [1.0, 0.0, 0.0, 0.0]),
        "rewards": torch.tensor([1.0, 2.0], dtype=torch.float64),
        "values": f64([0.5, 0.6, 0.7, 9.0], [0.5, 7.0, 7.0, 7.0]),
        "gen_logprobs": f64([-1.0, -1.0, -1.0, 0.0], [-1.0, 0.0, 0.0, 0.0]),
        "ref_logprobs": f64([-1.0, -1.0, -1.0, 0.0], [-1.0, 0.0, 0.0, 0.0]),
    }


def test_ppo_advantages_match_gae_by_hand_then_whitening() -> None:
    params = PpoParams(gamma=0.9, lam=0.8, normalize_rewards=False, kl_coef=0.1)
    out = ppo.actor_advantages(_ppo_batch(), params, ppo.new_state(params))
    # Same numbers as core's GAE test (zero KL since gen == ref).
    assert out.returns is not None
    assert out.returns[0].tolist() == pytest.approx([0.71712, 0.846, 1.0, 0.0])
    assert out.returns[1].tolist() == pytest.approx([2.0, 0.0, 0.0, 0.0])
    raw = torch.tensor([0.21712, 0.246, 0.3, 1.5], dtype=torch.float64)
    whitened = (raw - raw.mean()) / raw.std()
    assert out.advantages[0, :3].tolist() == pytest.approx(whitened[:3].tolist(), rel=1e-6)
    assert out.advantages[1, 0].item() == pytest.approx(whitened[3].item(), rel=1e-6)
    assert out.advantages[0, 3].item() == 0.0
    assert out.metrics["reward_mean"] == 1.5 and out.metrics["kl"] == 0.0


def test_ppo_reward_normalisation_and_clipping() -> None:
    params = PpoParams(normalize_rewards=True, reward_clip=0.5)
    state = ppo.new_state(params)
    normalised = ppo.normalized_rewards(torch.tensor([1.0, 3.0]), params, state.rewards)
    # Running mean 2, unbiased std sqrt(2): (+-1)/sqrt(2) = +-0.707, clipped to +-0.5.
    assert normalised.tolist() == pytest.approx([-0.5, 0.5])
    assert state.rewards.count == 2
    unnormalised = PpoParams(normalize_rewards=False, reward_clip=2.0)
    assert ppo.normalized_rewards(
        torch.tensor([-5.0, 1.0]), unnormalised, ppo.new_state(unnormalised).rewards
    ).tolist() == [-2.0, 1.0]


def test_ppo_state_resumes_exactly() -> None:
    params = PpoParams()
    batches = [_ppo_batch() for _ in range(3)]
    for i, b in enumerate(batches):
        b["rewards"] = b["rewards"] * (i + 1)
    straight = ppo.new_state(params)
    results = [ppo.actor_advantages(b, params, straight).advantages for b in batches]
    first = ppo.new_state(params)
    ppo.actor_advantages(batches[0], params, first)
    resumed = ppo.new_state(params)
    resumed.load_state_dict(first.state_dict())
    for b, expected in zip(batches[1:], results[1:], strict=True):
        assert torch.equal(ppo.actor_advantages(b, params, resumed).advantages, expected)
    assert resumed.state_dict() == straight.state_dict()


def test_ppo_losses() -> None:
    batch = _ppo_batch()
    params = PpoParams(entropy_coef=0.1)
    adv = f64([1.0, 1.0, 1.0, 0.0], [-1.0, 0.0, 0.0, 0.0])
    entropy = f64([2.0, 2.0, 2.0, 50.0], [2.0, 50.0, 50.0, 50.0])
    out = ppo.actor_loss(batch["gen_logprobs"], batch, adv, params, entropy=entropy)
    # ratio 1: surrogate -A, mean over 4 real tokens = -0.5; entropy bonus 0.1 * 2.
    assert out.loss.item() == pytest.approx(-0.5 - 0.2)
    assert out.metrics["entropy"] == pytest.approx(2.0)
    with pytest.raises(ValueError, match="no entropy"):
        ppo.actor_loss(batch["gen_logprobs"], batch, adv, params)
    returns = batch["values"] + 1.0
    critic = ppo.critic_loss(batch["values"] + 0.5, batch, returns, PpoParams(value_clip_ratio=0.2))
    # Clipped to +0.2: error 0.8^2 vs unclipped 0.5^2: 0.5 * 0.64.
    assert critic.loss.item() == pytest.approx(0.32)


# ---------------------------------------------------------------- Safe-RLHF


def test_lagrange_multiplier_update_and_clamping() -> None:
    params = SafeRlhfParams(cost_limit=1.0, lagrangian_lr=0.1, lagrangian_max=2.0)
    assert safe_rlhf.update_lagrange(1.0, 3.0, params) == pytest.approx(1.2)
    assert safe_rlhf.update_lagrange(0.05, 0.0, params) == 0.0
    assert safe_rlhf.update_lagrange(1.95, 10.0, params) == 2.0


def test_safe_rlhf_combination_and_state() -> None:
    assert safe_rlhf.combine(torch.tensor(1.0), torch.tensor(2.0), 1.0).item() == -0.5
    params = SafeRlhfParams(
        cost_limit=0.0,
        lagrangian_init=1.0,
        lagrangian_lr=0.5,
        normalize_rewards=False,
        gamma=1.0,
        lam=1.0,
        kl_coef=0.0,
    )
    state = safe_rlhf.new_state(params)
    batch = {
        "mask": torch.ones(2, 1),
        "rewards": torch.tensor([1.0, 0.0]),
        "costs": torch.tensor([2.0, 0.0]),
        "values": torch.zeros(2, 1, 2),
        "gen_logprobs": torch.zeros(2, 1),
    }
    out = safe_rlhf.actor_advantages(batch, params, state)
    # Mean cost 1 > limit 0: lambda 1 -> 1.5, then A = (A_r - 1.5 A_c) / 2.5.
    assert state.lagrange == pytest.approx(1.5)
    assert out.advantages[:, 0].tolist() == pytest.approx([(1 - 3) / 2.5, 0.0])
    assert out.returns is not None and out.returns.shape == (2, 1, 2)
    assert out.returns[0, 0].tolist() == [1.0, 2.0]
    restored = safe_rlhf.new_state(params)
    restored.load_state_dict(state.state_dict())
    assert restored == state


def test_safe_rlhf_kl_weight_does_not_depend_on_lambda() -> None:
    batch = {
        "mask": torch.ones(1, 1, dtype=torch.float64),
        "rewards": torch.zeros(1, dtype=torch.float64),
        "costs": torch.zeros(1, dtype=torch.float64),
        "values": torch.zeros(1, 1, 2, dtype=torch.float64),
        "gen_logprobs": f64([-1.0]),
        "ref_logprobs": f64([-2.0]),
    }
    for lagrange in (0.0, 1.0, 7.0):
        params = SafeRlhfParams(
            kl_coef=0.3,
            kl_estimator="k1",
            normalize_rewards=False,
            lagrangian_init=lagrange,
            cost_limit=0.0,
            lagrangian_lr=1e-9,
        )
        out = safe_rlhf.actor_advantages(batch, params, safe_rlhf.new_state(params))
        assert out.advantages.item() == pytest.approx(-0.3, rel=1e-6)


def test_safe_rlhf_needs_two_values_and_sums_both_value_losses() -> None:
    params = SafeRlhfParams()
    batch = {
        "mask": torch.ones(1, 1),
        "rewards": torch.zeros(1),
        "costs": torch.zeros(1),
        "values": torch.zeros(1, 1),
        "gen_logprobs": torch.zeros(1, 1),
    }
    with pytest.raises(ValueError, match=r"values must be \[B, T, 2\]"):
        safe_rlhf.actor_advantages(batch, params, safe_rlhf.new_state(params))
    batch["values"] = torch.zeros(1, 1, 2)
    returns = torch.tensor([[[0.1, -0.2]]])
    loss = safe_rlhf.critic_loss(torch.zeros(1, 1, 2), batch, returns, params)
    assert loss.loss.item() == pytest.approx(0.5 * 0.01 + 0.5 * 0.04)


def test_clip_higher_and_dual_clip_bound_the_loss_as_their_papers_define() -> None:
    mask = torch.ones(1, 4)
    old = torch.zeros(1, 4)
    # Ratios 1.25 (A > 0), 0.7 (A < 0), 5 (A < 0), 1.1 (A > 0).
    new = torch.tensor([[1.25, 0.7, 5.0, 1.1]]).log()
    adv = torch.tensor([[1.0, -1.0, -1.0, 1.0]])
    symmetric, clipped = core.clipped_surrogate(new, old, adv, mask, core.Clip(0.2, 0.2))
    assert symmetric[0].tolist() == pytest.approx([-1.2, 0.8, 5.0, -1.1])
    assert clipped.tolist() == [[True, True, False, False]]
    # DAPO's clip-higher: the ratio may rise to 1.28 under a positive advantage (more
    # exploration), the lower bound stays 0.8.
    dapo, clipped = core.clipped_surrogate(new, old, adv, mask, core.Clip(0.2, 0.28))
    assert dapo[0].tolist() == pytest.approx([-1.25, 0.8, 5.0, -1.1])
    assert clipped.tolist() == [[False, True, False, False]]
    # Dual-clip c = 3: a negative advantage's loss is at most -c*A (the ratio-5 token).
    dual, clipped = core.clipped_surrogate(new, old, adv, mask, core.Clip(0.2, 0.2, 3.0))
    assert dual[0].tolist() == pytest.approx([-1.2, 0.8, 3.0, -1.1])
    assert clipped.tolist() == [[True, True, True, False]]
    # From the job's parameters.
    params = GrpoParams(clip_low=0.2, clip_high=0.28, dual_clip=3.0)
    assert core.clip_of(params) == core.Clip(0.2, 0.28, 3.0)
    assert core.clip_of(GrpoParams()) == core.Clip(0.2, 0.2, None)


def test_the_k3_estimate_can_be_clamped() -> None:
    # A token the reference finds e^8 times likelier than the policy: k3 = e^8 - 9.
    logprobs, ref = torch.tensor([[-10.0, -1.0]]), torch.tensor([[-2.0, -1.0]])
    free = core.kl_per_token(logprobs, ref, "k3")
    assert free[0, 0] == pytest.approx(math.exp(8) - 9) and free[0, 1] == 0
    clamped = core.kl_per_token(logprobs, ref, "k3", clamp=10.0)
    assert clamped.tolist() == [[10.0, 0.0]]
    batch = {"mask": torch.ones(1, 2), "gen_logprobs": logprobs, "ref_logprobs": ref}
    assert core.reward_kl(batch, 0.1, "k3", 10.0).tolist() == [[10.0, 0.0]]  # type: ignore[union-attr]


@pytest.mark.parametrize("how", ["token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm"])
def test_each_aggregation_is_exact_over_micro_batches_and_replicas(how) -> None:
    # A minibatch of 12 sequences of uneven lengths, split as the trainer splits it: over
    # 2 data-parallel replicas, then into uneven micro-batches on each.
    gen = torch.Generator().manual_seed(0)
    loss = torch.randn(12, 7, generator=gen)
    lengths = torch.tensor([1, 7, 3, 2, 6, 5, 4, 7, 1, 2, 3, 6])
    mask = (torch.arange(7)[None, :] < lengths[:, None]).float()
    full = core.aggregate(loss, mask, how)
    tokens, rows = float(mask.sum()), 12
    parts = [(0, 2), (2, 6), (6, 7), (7, 12)]  # replica 0: rows 0-5, replica 1: rows 6-11
    total = sum(
        core.aggregate(loss[a:b], mask[a:b], how)
        * core.micro_batch_weight(mask[a:b], tokens, rows, how)
        for a, b in parts
    )
    torch.testing.assert_close(total, full)
    if how == "seq-mean-token-sum-norm":  # Dr. GRPO: sums over the budget, not the length
        torch.testing.assert_close(full, (loss * mask).sum(1).div(7).mean())


def test_overlong_responses_lose_reward_softly_as_dapo_defines() -> None:
    # Budget 10 tokens, buffer 4: no penalty up to 6 tokens, then -0.25 per token to -1 at 10.
    lengths = torch.tensor([3, 6, 7, 8, 10])
    mask = (torch.arange(10)[None, :] < lengths[:, None]).float()
    assert grpo.overlong_penalty(mask, 4, 1.0).tolist() == [0.0, 0.0, -0.25, -0.5, -1.0]
    assert grpo.overlong_penalty(mask, None, 1.0).tolist() == [0.0] * 5
    # In GRPO's advantages: two responses of one group, equal rewards, one overlong.
    two = (torch.arange(10)[None, :] < torch.tensor([[5], [10]])).float()
    batch = {"mask": two, "rewards": torch.tensor([1.0, 1.0])}
    params = GrpoParams(group_size=2, overlong_buffer=4, overlong_penalty=0.5)
    out = grpo.actor_advantages(batch, params, core.NoState(), 2)
    assert out.advantages[0, 0] > 0 > out.advantages[1, 0]
    assert out.metrics["overlong_fraction"] == 0.5


def test_the_adaptive_kl_controller_moves_the_coefficient_towards_its_target() -> None:
    # Ziegler et al.: error clipped to +-0.2, scaled by samples / horizon.
    assert ppo.adapted_kl_coef(0.1, 12.0, 6.0, 256, 10_000) == pytest.approx(
        0.1 * (1 + 0.2 * 0.0256)
    )
    assert ppo.adapted_kl_coef(0.1, 5.4, 6.0, 100, 100) == pytest.approx(0.1 * 0.9)
    mask = torch.ones(2, 3)
    batch = {
        "mask": mask,
        "rewards": torch.tensor([1.0, 0.0]),
        "values": torch.zeros(2, 3),
        "gen_logprobs": torch.full((2, 3), -1.0),
        "ref_logprobs": torch.full((2, 3), -2.0),  # k1 = 1 per token: KL 3 per sequence
    }
    params = PpoParams(kl_coef=0.1, kl_target=1.0, kl_horizon=2, normalize_rewards=False)
    state = ppo.new_state(params)
    out = ppo.actor_advantages(batch, params, state, 1)
    assert out.metrics["kl_coef"] == pytest.approx(0.1)
    assert state.kl_coef == pytest.approx(0.1 * 1.2)  # too much KL: the coefficient rises
    resumed = ppo.new_state(params)
    resumed.load_state_dict(state.state_dict())
    assert resumed.kl_coef == state.kl_coef  # saved in checkpoints
    fixed = ppo.new_state(PpoParams(kl_coef=0.1))
    ppo.actor_advantages(batch, PpoParams(kl_coef=0.1), fixed, 1)
    assert fixed.kl_coef is None and "kl_coef" not in fixed.state_dict()
