"""Engines under any layout: forward (log-probabilities, values), training, generation."""

from rlhf_worker.engine.forward import forward_logprobs, forward_values, split_batch
from rlhf_worker.engine.generate import GenerationConfig, GenerationOutput, generate
from rlhf_worker.engine.train import OptimizerConfig, Trainer, TrainStats

__all__ = [
    "GenerationConfig",
    "GenerationOutput",
    "OptimizerConfig",
    "TrainStats",
    "Trainer",
    "forward_logprobs",
    "forward_values",
    "generate",
    "split_batch",
]
