"""Activation recomputation, as the plan's `recompute` asks for a training call."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from rlhf_operator.contract.sharding import Layout
from rlhf_worker.engine import OptimizerConfig, Trainer
from rlhf_worker.model import load_decoder
from tests.worker.engine.test_mixed_precision import batch, loss


def test_recomputation_repeats_each_layer_and_changes_no_number(tiny_lm_dir: Path) -> None:
    """The plan's `recompute`: every layer's forward runs again in the backward, and the
    step is the one without it, bit for bit (float32 and bf16)."""
    for dtype in (torch.float32, torch.bfloat16):
        results = {}
        for recompute in (False, True):
            model = load_decoder(tiny_lm_dir, Layout(ranks=(0,)), 0, dtype=dtype)
            calls = []
            original = model._layer

            def counted(n: int, *args: object, original=original, calls=calls) -> Tensor:
                calls.append(n)
                return original(n, *args)  # type: ignore[arg-type]

            model._layer = counted  # type: ignore[method-assign]
            trainer = Trainer(model, OptimizerConfig(lr=1e-3))
            stats = trainer.step(batch(), loss, micro_batches=2, recompute=recompute)
            results[recompute] = (stats, {n: w.clone() for n, w in trainer.master.items()})
            layers = len(model.layers)
            assert len(calls) == 2 * layers * (2 if recompute else 1), (dtype, recompute)
        (plain, weights), (again, recomputed) = results[False], results[True]
        assert plain.loss == again.loss and plain.grad_norm == again.grad_norm
        assert all(torch.equal(weights[n], recomputed[n]) for n in weights), dtype


def step_tp2(rank: int, world_size: int, model_dir: str, recompute: bool) -> dict[str, Tensor]:
    """One training step at tp=2: the recomputed forward repeats the layers' all-reduces."""
    model = load_decoder(model_dir, Layout(ranks=(0, 1), tp=2), rank)
    trainer = Trainer(model, OptimizerConfig(lr=1e-3))
    trainer.step(batch(), loss, micro_batches=2, recompute=recompute)
    return {name: w.detach().clone() for name, w in trainer.master.items()}


def test_recomputation_under_tensor_parallelism(tiny_lm_dir: Path) -> None:
    from tests.worker.distributed import run_distributed

    plain = run_distributed(step_tp2, 2, str(tiny_lm_dir), False, timeout=300)
    again = run_distributed(step_tp2, 2, str(tiny_lm_dir), True, timeout=300)
    for rank in (0, 1):
        assert all(torch.equal(plain[rank][n], again[rank][n]) for n in plain[rank]), rank
