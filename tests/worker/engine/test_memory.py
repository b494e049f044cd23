"""Memory the engine holds, measured (``runtime/memory.py``) against the planner's model.

Micro-batches bound the activations (1F1B: one micro-batch in flight at pp = 1), and
recomputation lowers a step's peak by what the estimator says it does.
"""

from __future__ import annotations

import gc
from collections.abc import Mapping
from pathlib import Path

import pytest
import torch
from torch import Tensor

from rlhf_operator.api.dataflow import Call
from rlhf_operator.api.models import ArchitectureConfig
from rlhf_operator.contract.sharding import Layout
from rlhf_operator.planner.cluster import Cluster, Mesh
from rlhf_operator.planner.estimator import CallCost, Strategy, call_cost
from rlhf_operator.planner.profiles import load_profile
from rlhf_operator.planner.workload import RoleModel, Workload
from rlhf_worker.engine import OptimizerConfig, Trainer
from rlhf_worker.model import load_decoder, read_config
from rlhf_worker.runtime.memory import CpuAllocations, measure_peak

ROWS, SEQ = 8, 64
TRAIN = Call("actor_train", "actor", "train", ("responses",), ())


def batch() -> dict[str, Tensor]:
    ids = torch.randint(3, 256, (ROWS, SEQ), generator=torch.Generator().manual_seed(0))
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


def loss(logprobs: Tensor, mb: Mapping[str, Tensor]) -> Tensor:
    return -logprobs.float().mean()


def step_peak(
    model_dir: Path, dtype: torch.dtype, micro_batches: int, recompute: bool
) -> tuple[int, int, int]:
    """(bytes held before a step, its peak, its fp32 gradient buffer) on one process; the
    measured step is the second (the AdamW moments exist, as in every later step)."""
    trainer = Trainer(
        load_decoder(model_dir, Layout(ranks=(0,)), 0, dtype=dtype), OptimizerConfig()
    )
    trainer.step(batch(), loss, micro_batches, recompute)
    # Garbage other tests left (in cycles) would otherwise be collected during the step,
    # below what was counted before it.
    gc.collect()
    before = CpuAllocations()
    before.close()
    with measure_peak(torch.device("cpu")) as peak:
        trainer.step(batch(), loss, micro_batches, recompute)
    return before.current, peak.peak, 4 * trainer.shards.row


def estimated(model_dir: Path, dtype: torch.dtype, strategy: Strategy) -> CallCost:
    arch = ArchitectureConfig.from_hf_config(read_config(model_dir))
    b = torch.empty((), dtype=dtype).element_size()
    roles = {"actor": RoleModel("actor", arch, b, trainable=True)}
    w = Workload("memory", "grpo", roles, (TRAIN,), {}, ROWS, SEQ // 2, SEQ // 2)
    return call_cost(w, TRAIN, Cluster(1, 1, load_profile("cpu")), Mesh(0, 1), strategy)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_four_micro_batches_hold_a_third_of_the_activations_of_one(
    tiny_lm_dir: Path, dtype: torch.dtype
) -> None:
    activations = {}
    for m in (1, 4):
        before, peak, grads = step_peak(tiny_lm_dir, dtype, m, recompute=False)
        activations[m] = peak - before - grads  # what the forward kept for the backward
    # Measured: 0.25 in float32 and in bf16; the GPipe engine the issue measured held 1.1x.
    assert activations[4] <= 0.35 * activations[1], activations


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_recomputation_lowers_the_peak_by_what_the_estimator_says(
    tiny_lm_dir: Path, dtype: torch.dtype
) -> None:
    # What the step allocates on top of what the process holds (the weights and optimizer
    # state, and whatever other tests left alive): the estimate's `active_bytes`.
    measured = {}
    for rc in (False, True):
        before, peak, _ = step_peak(tiny_lm_dir, dtype, 1, rc)
        measured[rc] = peak - before
    predicted = {
        rc: estimated(tiny_lm_dir, dtype, Strategy(1, 1, 1, 1, recompute=rc)).active_bytes
        for rc in (False, True)
    }
    saved, expected = measured[False] - measured[True], predicted[False] - predicted[True]
    assert saved > 0.3 * measured[False]  # recomputation matters on this model
    # Measured: 28.8 MiB saved against 28.4 estimated (float32), 18.1 against 18.1 (bf16).
    assert abs(saved / expected - 1) <= 0.1, (saved, expected)
    for rc in (False, True):  # and each step's transients are the estimate's
        assert abs(measured[rc] / predicted[rc] - 1) <= 0.1, (rc, measured, predicted)
