"""Engine terms of a profile solved from engine timings: the estimator reproduces them."""

from __future__ import annotations

import dataclasses

import pytest

from rlhf_operator.planner.calibrate import (
    GEN,
    INF,
    TRAIN,
    calibrate,
    decode_step,
    estimate,
    fit_reward,
    tiny_workload,
)
from rlhf_operator.planner.profiles import GenerationBackend, load_profile


def test_fit_reward_is_a_line_through_two_counts():
    # 4 samples 0.3 ms, 64 samples 2.7 ms: 40 us per sample, 0.14 ms fixed
    overhead, per_sample = fit_reward({4: 3.0e-4, 64: 2.7e-3})
    assert per_sample == pytest.approx(4e-5)
    assert overhead == pytest.approx(3.0e-4 - 4 * 4e-5)


def test_calibration_recovers_the_terms_that_produced_the_timings():
    cpu = load_profile("cpu")
    truth = dataclasses.replace(
        cpu,
        matmul_efficiency=0.2,
        backward_factor=2.7,
        optimizer_step_overhead=0.05,
        call_overhead=0.0,
        generation={**cpu.generation, "torch": GenerationBackend(0.6, 2e-3, 3e-4)},
    )
    prompt, new, rows = 32, 16, 16
    work = tiny_workload(rows, prompt, new)
    engine = {
        "prompt": prompt,
        "new_tokens": new,
        "decode_step_seconds": {r: decode_step(truth, r, prompt, new) for r in (4, 16)},
        "forward_rows": rows,
        "forward_seconds": estimate(truth, work, INF),
        "train_seconds": {
            r: estimate(truth, tiny_workload(r, prompt, new), TRAIN) for r in (4, 16)
        },
        "reward_seconds": {4: 1e-3 + 4 * 5e-5, 64: 1e-3 + 64 * 5e-5},
    }
    got = calibrate(cpu, engine)
    assert got.matmul_efficiency == pytest.approx(0.2, rel=1e-6)
    assert got.backward_factor == pytest.approx(2.7, rel=1e-6)
    assert got.optimizer_step_overhead == pytest.approx(0.05, rel=1e-6)
    assert got.generation["torch"].step_overhead_per_layer == pytest.approx(2e-3, rel=1e-6)
    assert got.generation["torch"].step_overhead_per_sequence == pytest.approx(3e-4, rel=1e-6)
    assert got.call_overhead == pytest.approx(1e-3)
    assert got.function_seconds_per_sample == pytest.approx(5e-5)
    assert got.generation["vllm"] == cpu.generation["vllm"]  # other backends untouched
    # The generation call itself: the truth's seconds plus the fitted call overhead.
    assert estimate(got, work, GEN) == pytest.approx(estimate(truth, work, GEN) + 1e-3, rel=1e-6)
