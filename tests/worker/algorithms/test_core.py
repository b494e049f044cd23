"""Shared math against hand-computed values on tiny tensors."""

from __future__ import annotations

import math

import pytest
import torch

from rlhf_worker.algorithms import core


def t(*rows: list[float]) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float64)


def test_masked_reductions_ignore_padding() -> None:
    x = t([1.0, 2.0, 3.0], [4.0, float("inf"), float("nan")])
    mask = t([1.0, 1.0, 1.0], [1.0, 0.0, 0.0])
    assert core.masked_sum(x, mask).item() == 10.0
    assert core.masked_mean(x, mask).item() == 2.5
    assert core.masked_mean(x, mask, dim=1).tolist() == [2.0, 4.0]
    # Unbiased variance of 1, 2, 3, 4 is 5/3.
    assert core.masked_var(x, mask).item() == pytest.approx(5 / 3)
    assert core.masked_var(x, mask, unbiased=False).item() == pytest.approx(1.25)


def test_masked_mean_of_nothing_is_zero() -> None:
    assert core.masked_mean(t([1.0, 2.0]), t([0.0, 0.0])).item() == 0.0


def test_whiten_gives_zero_mean_unit_variance_and_zero_padding() -> None:
    x = t([1.0, 2.0, 3.0], [4.0, 100.0, 100.0])
    mask = t([1.0, 1.0, 1.0], [1.0, 0.0, 0.0])
    w = core.masked_whiten(x, mask)
    assert core.masked_mean(w, mask).item() == pytest.approx(0.0, abs=1e-12)
    assert core.masked_var(w, mask).item() == pytest.approx(1.0, rel=1e-6)
    assert w[1, 1].item() == 0.0 and w[1, 2].item() == 0.0
    std = math.sqrt(5 / 3)
    assert w[0, 0].item() == pytest.approx((1 - 2.5) / std, rel=1e-6)


def test_kl_estimators_by_hand() -> None:
    logp = torch.tensor([math.log(0.5)], dtype=torch.float64)
    ref = torch.tensor([math.log(0.25)], dtype=torch.float64)
    d = math.log(2.0)
    assert core.kl_per_token(logp, ref, "k1").item() == pytest.approx(d)
    assert core.kl_per_token(logp, ref, "k2").item() == pytest.approx(0.5 * d * d)
    # k3 = r - 1 - log r with r = ref/p = 0.5.
    assert core.kl_per_token(logp, ref, "k3").item() == pytest.approx(0.5 - 1 - math.log(0.5))


def test_k1_and_k3_expectations_equal_the_exact_kl() -> None:
    p = torch.tensor([0.7, 0.2, 0.1], dtype=torch.float64)
    q = torch.tensor([0.4, 0.4, 0.2], dtype=torch.float64)
    exact = float((p * (p / q).log()).sum())
    for estimator in ("k1", "k3"):
        per_outcome = core.kl_per_token(p.log(), q.log(), estimator)
        assert float((p * per_outcome).sum()) == pytest.approx(exact, rel=1e-12)
    # k2's expectation is half the second moment of the log-ratio.
    k2 = core.kl_per_token(p.log(), q.log(), "k2")
    assert float((p * k2).sum()) == pytest.approx(0.5 * float((p * (p / q).log() ** 2).sum()))
    # k3 is never negative, k1 can be.
    assert (core.kl_per_token(p.log(), q.log(), "k3") >= 0).all()
    assert (core.kl_per_token(p.log(), q.log(), "k1") < 0).any()


def test_k3_does_not_overflow() -> None:
    kl = core.kl_per_token(torch.tensor([-200.0]), torch.tensor([0.0]), "k3")
    assert torch.isfinite(kl).all()


def test_unknown_kl_estimator() -> None:
    with pytest.raises(ValueError, match="unknown KL estimator 'k9'"):
        core.kl_per_token(torch.zeros(1), torch.zeros(1), "k9")  # type: ignore[arg-type]


def test_reward_goes_on_the_last_response_token() -> None:
    mask = t([1.0, 1.0, 1.0], [1.0, 0.0, 0.0], [0.0, 0.0, 0.0])
    placed = core.place_on_last_token(t([2.0, 3.0, 4.0])[0], mask)
    assert placed.tolist() == [[0, 0, 2], [3, 0, 0], [0, 0, 0]]


def test_token_rewards_subtract_the_kl_penalty_on_every_real_token() -> None:
    mask = t([1.0, 1.0, 0.0])
    kl = t([0.1, 0.2, 9.0])
    out = core.token_rewards(t([1.0])[0], mask, kl, kl_coef=0.5)
    assert out[0].tolist() == pytest.approx([-0.05, 1.0 - 0.1, 0.0])


def test_gae_on_three_tokens_by_hand() -> None:
    # gamma 0.9, lam 0.8, reward 1 at the end, values 0.5 0.6 0.7:
    # d2 = 1 - 0.7 = 0.3                 A2 = 0.3
    # d1 = 0.9 * 0.7 - 0.6 = 0.03        A1 = 0.03 + 0.72 * 0.3 = 0.246
    # d0 = 0.9 * 0.6 - 0.5 = 0.04        A0 = 0.04 + 0.72 * 0.246 = 0.21712
    rewards = t([0.0, 0.0, 1.0, 3.0], [2.0, 5.0, 5.0, 5.0])
    values = t([0.5, 0.6, 0.7, 9.0], [0.5, 7.0, 7.0, 7.0])
    mask = t([1.0, 1.0, 1.0, 0.0], [1.0, 0.0, 0.0, 0.0])
    adv, ret = core.gae(rewards, values, mask, gamma=0.9, lam=0.8)
    assert adv[0].tolist() == pytest.approx([0.21712, 0.246, 0.3, 0.0])
    assert ret[0].tolist() == pytest.approx([0.71712, 0.846, 1.0, 0.0])
    # A one-token response: A = r - V, nothing leaks from the padding.
    assert adv[1].tolist() == pytest.approx([1.5, 0.0, 0.0, 0.0])


def test_gae_with_gamma_and_lambda_one_is_return_minus_value() -> None:
    rewards = t([0.1, -0.2, 1.0])
    values = t([0.3, 0.2, 0.1])
    mask = torch.ones_like(rewards)
    adv, ret = core.gae(rewards, values, mask, gamma=1.0, lam=1.0)
    assert torch.allclose(ret, core.returns_to_go(rewards, mask))
    assert torch.allclose(ret, t([0.9, 0.8, 1.0]))
    assert torch.allclose(adv, ret - values)


def test_group_view_rejects_incomplete_groups() -> None:
    with pytest.raises(ValueError, match="5 samples is not a whole number of groups of 2"):
        core.group_view(torch.zeros(5), 2)


def _surrogate_grad(log_ratio: float, advantage: float) -> tuple[float, float]:
    new = torch.tensor([[log_ratio]], dtype=torch.float64, requires_grad=True)
    out = core.policy_loss(
        new,
        torch.zeros(1, 1, dtype=torch.float64),
        torch.tensor([[advantage]], dtype=torch.float64),
        torch.ones(1, 1, dtype=torch.float64),
        clip_ratio=0.2,
    )
    out.loss.backward()
    assert new.grad is not None
    return float(new.grad), out.metrics["clipfrac"]


def test_policy_clipping_at_the_boundary() -> None:
    eps = 1e-6
    # Positive advantage: above 1 + eps the clipped branch wins and has no gradient.
    grad, clipfrac = _surrogate_grad(math.log(1.2 + eps), 1.0)
    assert (grad, clipfrac) == (0.0, 1.0)
    grad, clipfrac = _surrogate_grad(math.log(1.2 - eps), 1.0)
    assert grad == pytest.approx(-(1.2 - eps)) and clipfrac == 0.0
    # Negative advantage: a large ratio is *not* clipped (the pessimistic bound).
    grad, clipfrac = _surrogate_grad(math.log(1.5), -1.0)
    assert grad == pytest.approx(1.5) and clipfrac == 0.0
    # Negative advantage below 1 - eps: clipped, no gradient.
    grad, clipfrac = _surrogate_grad(math.log(0.8 - eps), -1.0)
    assert (grad, clipfrac) == (0.0, 1.0)
    grad, _ = _surrogate_grad(math.log(0.8 + eps), -1.0)
    assert grad == pytest.approx(0.8 + eps)


def test_policy_loss_ignores_padding_even_if_it_holds_inf() -> None:
    adv = t([1.0, -2.0, 0.0])
    old = t([-1.0, -1.0, 0.0])
    mask = t([1.0, 1.0, 0.0])
    padded = torch.tensor([[-0.9, -1.1, float("-inf")]], dtype=torch.float64, requires_grad=True)
    out = core.policy_loss(padded, old, adv, mask, clip_ratio=0.2)
    out.loss.backward()
    assert padded.grad is not None
    assert torch.isfinite(out.loss) and torch.isfinite(padded.grad).all()
    assert padded.grad[0, 2].item() == 0.0
    unpadded = core.policy_loss(
        t([-0.9, -1.1]), t([-1.0, -1.0]), t([1.0, -2.0]), t([1.0, 1.0]), 0.2
    )
    assert out.loss.item() == pytest.approx(unpadded.loss.item())


def test_loss_aggregation() -> None:
    loss = t([1.0, 1.0, 1.0, 1.0], [4.0, 0.0, 0.0, 0.0])
    mask = t([1.0, 1.0, 1.0, 1.0], [1.0, 0.0, 0.0, 0.0])
    assert core.aggregate(loss, mask, "token-mean").item() == pytest.approx(8 / 5)
    assert core.aggregate(loss, mask, "sequence-mean").item() == pytest.approx((1 + 4) / 2)


def test_value_loss_clipping_by_hand() -> None:
    old = t([1.0, 1.0])
    returns = t([2.0, 2.0])
    mask = torch.ones_like(old)
    # new 1.5: clipped to 1.2, errors 0.25 vs 0.64 -> 0.64.
    # new 0.5: clipped to 0.8, errors 2.25 vs 1.44 -> 2.25.
    out = core.value_loss(t([1.5, 0.5]), old, returns, mask, clip=0.2)
    assert out.loss.item() == pytest.approx(0.5 * (0.64 + 2.25) / 2)
    assert out.metrics["value_clipfrac"] == 0.5


def test_entropy() -> None:
    uniform = torch.zeros(2, 3, 4)
    assert torch.allclose(core.entropy(uniform), torch.full((2, 3), math.log(4)))
    peaked = torch.tensor([[100.0, 0.0, 0.0]])
    assert core.entropy(peaked).item() == pytest.approx(0.0, abs=1e-6)


def test_running_moments_match_the_whole_data() -> None:
    gen = torch.Generator().manual_seed(0)
    chunks = [torch.randn(n, generator=gen) * 3 + 1 for n in (5, 1, 17)]
    stats = core.RunningMoments()
    for chunk in chunks:
        stats.update(chunk)
    everything = torch.cat(chunks).double()
    assert stats.count == 23
    assert stats.mean == pytest.approx(float(everything.mean()))
    assert stats.var == pytest.approx(float(everything.var()))
    restored = core.RunningMoments()
    restored.load_state_dict(stats.state_dict())
    assert restored == stats


def test_no_state_rejects_foreign_state() -> None:
    core.NoState().load_state_dict({})
    with pytest.raises(ValueError, match="unexpected algorithm state"):
        core.NoState().load_state_dict({"lagrange": 1.0})


def test_need_names_the_missing_input() -> None:
    with pytest.raises(KeyError, match="ppo: the batch has no 'values'"):
        core.need({"mask": torch.ones(1)}, "values", "ppo")


def test_gae_matches_the_explicit_sum_on_random_ragged_batches() -> None:
    # A_t = sum_l (gamma lam)^l delta_{t+l}, delta_t = r_t + gamma V_{t+1} - V_t, V_end = 0.
    gen = torch.Generator().manual_seed(1)
    for _ in range(20):
        batch, length = 3, 6
        lengths = torch.randint(0, length + 1, (batch,), generator=gen).tolist()
        gamma, lam = torch.rand(2, generator=gen, dtype=torch.float64).tolist()
        rewards = torch.randn(batch, length, generator=gen, dtype=torch.float64)
        values = torch.randn(batch, length, generator=gen, dtype=torch.float64)
        mask = torch.zeros(batch, length, dtype=torch.float64)
        for b, n in enumerate(lengths):
            mask[b, :n] = 1.0
        adv, ret = core.gae(rewards, values, mask, gamma, lam)
        for b, n in enumerate(lengths):
            v = [*values[b, :n].tolist(), 0.0]
            deltas = [rewards[b, t].item() + gamma * v[t + 1] - v[t] for t in range(n)]
            for t in range(n):
                expected = sum((gamma * lam) ** k * deltas[t + k] for k in range(n - t))
                assert adv[b, t].item() == pytest.approx(expected, abs=1e-9)
                assert ret[b, t].item() == pytest.approx(expected + v[t], abs=1e-9)
            assert (adv[b, n:] == 0).all() and (ret[b, n:] == 0).all()


def test_whitening_gradient_ignores_infinite_padding() -> None:
    x = torch.tensor([[1.0, 2.0, float("inf")]], requires_grad=True)
    mask = torch.tensor([[1.0, 1.0, 0.0]])
    (core.masked_whiten(x, mask) * torch.tensor([[1.0, 3.0, 5.0]])).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad[0, 2] == 0
