"""The RLHF algorithms' per-token math: one small module per algorithm plus ``core``.

Every algorithm module has the same surface, so the train calls can use
``for_name(spec.algorithm.name)`` without knowing which one runs:

- ``NAME``, ``CALLS`` (its calls, from ``rlhf_operator.api.dataflow.calls_for``)
  and ``Params`` (its hyper-parameter block from ``rlhf_operator.api.algorithm``);
- ``new_state(params)``: the state it keeps across iterations (running reward
  statistics, the Lagrange multiplier; empty for GRPO, RLOO, ReMax), with
  ``state_dict()`` / ``load_state_dict()`` for checkpoints;
- ``actor_advantages(batch, params, state, samples_per_prompt) ->
  Advantages(advantages [B, T], returns [B, T] (or [B, T, 2]) | None, metrics)``,
  called once per iteration by each train call (it may update ``state``); its
  metrics always include ``reward_mean`` and ``kl`` (mean summed KL per response);
- ``actor_loss(new_logprobs, batch, advantages, params, entropy=None) ->
  LossOut(loss, metrics)``, called per minibatch with the rows of that minibatch;
- ``critic_loss(new_values, batch, returns, params) -> LossOut`` (PPO, Safe-RLHF).

Tensor conventions:

- ``batch`` maps the dataflow's names (``rewards``, ``costs``, ``values``,
  ``gen_logprobs``, ``ref_logprobs``, ``greedy_rewards``) plus ``mask`` to tensors.
- Per-sequence scores (``rewards``, ``costs``) are ``[B]``; ``greedy_rewards`` is
  ``[B / samples_per_prompt]``, one per prompt.
- Per-token tensors are ``[B, T]`` over the *response* tokens only (prompt
  excluded), right-padded; ``mask`` is a float ``[B, T]``, 1 on real response
  tokens, 0 on padding. ``gen_logprobs[b, t]`` is log pi(token t | prefix).
  ``values[b, t]`` is the critic's value before token t (``[B, T, 2]`` for
  Safe-RLHF: reward value, cost value).
- Samples of the same prompt are consecutive: the batch is ``B / n`` contiguous
  groups of ``n = samples_per_prompt`` rows.
- The sequence reward is placed on the last response token; the KL penalty
  to the reference goes into the per-token reward (PPO, ReMax, RLOO,
  Safe-RLHF) or into the loss (GRPO), with the estimator the params name.
- ``actor_advantages`` must see the whole iteration batch (every group whole;
  whitening and reward statistics over all samples): compute it on the full
  batch, identically on every rank, then take each rank's and minibatch's rows.
"""

from __future__ import annotations

from types import ModuleType

from rlhf_worker.algorithms import grpo, ppo, remax, rloo, safe_rlhf

ALGORITHMS: dict[str, ModuleType] = {
    "ppo": ppo,
    "grpo": grpo,
    "remax": remax,
    "rloo": rloo,
    "safe-rlhf": safe_rlhf,
}


def for_name(name: str) -> ModuleType:
    """The module of the algorithm called ``name`` in the API (``safe-rlhf``, ...)."""
    try:
        return ALGORITHMS[name]
    except KeyError:
        raise ValueError(
            f"unknown algorithm {name!r}: expected one of {', '.join(ALGORITHMS)}"
        ) from None
