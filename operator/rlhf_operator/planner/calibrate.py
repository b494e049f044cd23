"""Turn measurements of the worker's own engine into the profile's engine terms.

`rlhfctl profile` (`rlhf_worker.profiling`) times the engine on the `tiny`
preset in one process: a decode step at two batch sizes, an inference forward,
a training step, and a reward function over n samples. This module solves for
the profile fields that make the estimator's own formulas reproduce those
times at those shapes, so the estimator and the profile cannot drift apart:

- `function_seconds_per_sample` and `call_overhead`: the slope and intercept of
  the reward function's time over two sample counts;
- `matmul_efficiency`: the value at which the estimated inference forward
  equals the measured one (the engine's whole forward: layers, head,
  log-probabilities);
- `backward_factor` and `optimizer_step_overhead`: from training steps at two
  batch sizes, the factor that reproduces how the step grows with the rows, and
  the fixed rest of the step (AdamW's and the gradients' per-parameter loops);
- the torch backend's `step_overhead_per_sequence` and `step_overhead_per_layer`:
  what a measured decode step takes beyond the estimated weight/KV reads and
  compute, split into a part that grows with the batch and a per-layer rest.

Pure Python: it runs in the operator's environment as well as the worker's.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

from ..api.dataflow import Call
from ..api.models import PRESETS
from .estimator import Strategy, _call_cost
from .profiles import GenerationBackend, Profile
from .workload import RoleModel, Workload

GEN = Call("actor_gen", "actor", "generate", ("prompts",), ("responses",))
INF = Call("ref_inf", "actor", "inference", ("responses",), ("ref_logprobs",))
TRAIN = Call("actor_train", "actor", "train", ("responses",), ("actor",))
SINGLE = Strategy(1, 1, 1, 1)


def tiny_workload(rows: int, prompt: int, new_tokens: int) -> Workload:
    """One process running the `tiny` preset (float32) on `rows` sequences."""
    role = RoleModel("actor", PRESETS["tiny"], dtype_bytes=4, trainable=True)
    return Workload(
        "calibration",
        "grpo",
        {"actor": role},
        (GEN, INF, TRAIN),
        {},
        samples=rows,
        prompt_len=prompt,
        gen_len=new_tokens,
    )


def estimate(profile: Profile, workload: Workload, call: Call) -> float:
    """The estimator's seconds for `call` in one process (dp = tp = pp = 1, one micro-batch)."""
    return _call_cost(workload, call, profile, 1, False, False, SINGLE).seconds


def solve_increasing(f: Callable[[float], float], target: float, lo: float, hi: float) -> float:
    """x in [lo, hi] with f(x) = target for an increasing f (bisection; clamped at the ends)."""
    if f(lo) >= target:
        return lo
    if f(hi) <= target:
        return hi
    for _ in range(60):
        mid = (lo * hi) ** 0.5 if lo > 0 else (lo + hi) / 2
        if f(mid) < target:
            lo = mid
        else:
            hi = mid
    return (lo * hi) ** 0.5 if lo > 0 else (lo + hi) / 2


def fit_reward(seconds_by_n: Mapping[int, float]) -> tuple[float, float]:
    """(call overhead, seconds per sample) from the reward function's time at two sample counts."""
    (n1, t1), (n2, t2) = sorted(seconds_by_n.items())[:1] + sorted(seconds_by_n.items())[-1:]
    per_sample = max((t2 - t1) / (n2 - n1), 1e-7)
    return max(t1 - n1 * per_sample, 0.0), per_sample


def decode_step(profile: Profile, rows: int, prompt: int, new_tokens: int) -> float:
    """The estimator's decode step at `rows` sequences (two generation lengths: prefill cancels)."""
    long = estimate(profile, tiny_workload(rows, prompt, new_tokens), GEN)
    short = estimate(profile, tiny_workload(rows, prompt, new_tokens // 2), GEN)
    return (long - short) / (new_tokens - new_tokens // 2)


def fit_decode(
    profile: Profile, step_by_rows: Mapping[int, float], prompt: int, new_tokens: int
) -> GenerationBackend:
    """The torch backend's per-layer and per-sequence step overheads from measured decode steps."""
    torch_backend = profile.backend("torch")
    zero = dataclasses.replace(
        torch_backend, step_overhead_per_layer=0.0, step_overhead_per_sequence=0.0
    )
    base = dataclasses.replace(profile, generation={**profile.generation, "torch": zero})
    (r1, s1), (r2, s2) = sorted(step_by_rows.items())[:1] + sorted(step_by_rows.items())[-1:]
    rest1 = s1 - decode_step(base, r1, prompt, new_tokens)
    rest2 = s2 - decode_step(base, r2, prompt, new_tokens)
    per_sequence = max((rest2 - rest1) / (r2 - r1), 0.0)
    layers = PRESETS["tiny"].num_hidden_layers
    per_layer = max((rest1 - r1 * per_sequence) / layers, 1e-7)
    return dataclasses.replace(
        torch_backend,
        step_overhead_per_layer=per_layer,
        step_overhead_per_sequence=per_sequence,
    )


def calibrate(profile: Profile, engine: Mapping[str, Any]) -> Profile:
    """`profile` with its engine terms solved from `engine` (`rlhf_worker.profiling`'s figures)."""
    prompt, new = int(engine["prompt"]), int(engine["new_tokens"])
    overhead, per_sample = fit_reward(
        {int(k): float(v) for k, v in engine["reward_seconds"].items()}
    )
    rows = int(engine["forward_rows"])
    work = tiny_workload(rows, prompt, new)
    # The engine timings below are not through a call handler: no call overhead in them; and
    # the terms solved here start from zero, not from what the profile had before.
    bare = dataclasses.replace(profile, call_overhead=0.0, optimizer_step_overhead=0.0)
    eff = solve_increasing(
        lambda e: -estimate(dataclasses.replace(bare, matmul_efficiency=e), work, INF),
        -float(engine["forward_seconds"]),
        1e-3,
        1.0,
    )
    bare = dataclasses.replace(bare, matmul_efficiency=eff)
    # Training at two batch sizes: the difference fixes the backward factor (it scales with
    # the rows), the rest of the small step is the per-step overhead.
    train = {int(k): float(v) for k, v in engine["train_seconds"].items()}
    (r1, t1), (r2, t2) = sorted(train.items())[:1] + sorted(train.items())[-1:]
    small = tiny_workload(r1, prompt, new)

    def growth(f: float) -> float:
        prof = dataclasses.replace(bare, backward_factor=f)
        return estimate(prof, tiny_workload(r2, prompt, new), TRAIN) - estimate(prof, small, TRAIN)

    backward = solve_increasing(growth, t2 - t1, 0.5, 20.0)
    bare = dataclasses.replace(bare, backward_factor=backward)
    step_overhead = max(t1 - estimate(bare, small, TRAIN), 0.0)
    bare = dataclasses.replace(bare, optimizer_step_overhead=step_overhead)
    steps = {int(k): float(v) for k, v in engine["decode_step_seconds"].items()}
    torch_backend = fit_decode(bare, steps, prompt, new)
    return dataclasses.replace(
        bare,
        call_overhead=overhead,
        function_seconds_per_sample=per_sample,
        generation={**profile.generation, "torch": torch_backend},
    )
