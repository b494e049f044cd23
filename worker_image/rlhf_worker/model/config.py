"""The decoder's configuration: an architecture (the API's `ArchitectureConfig`) and its shape.

A config.json is read through `ArchitectureConfig.from_hf_config`, so a checkpoint's
config, a manifest's architecture and the planner see the same fields with the same
defaults; the shape (`contract.sharding.ModelShape`) says which parameters exist and
how they are split.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from rlhf_operator.api.models import ArchitectureConfig
from rlhf_operator.contract.sharding import HeadKind, ModelShape

# The fields that fix the architecture: a checkpoint must agree with the plan on each.
# (Not max_position_embeddings: a checkpoint may support longer sequences than planned.)
COMPARED_FIELDS = (
    "model_type",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "head_dim",
    "vocab_size",
    "rope_theta",
    "rms_norm_eps",
    "tie_word_embeddings",
)


@dataclass(frozen=True)
class ModelConfig:
    """Everything the decoder's math needs: the shape plus RoPE and norm constants."""

    arch: ArchitectureConfig
    shape: ModelShape

    @classmethod
    def of(
        cls, arch: ArchitectureConfig, head: HeadKind = "lm", num_values: int = 1
    ) -> ModelConfig:
        return cls(arch, ModelShape.from_architecture(arch, head, num_values))

    @classmethod
    def from_hf(
        cls, cfg: Mapping[str, Any], head: HeadKind = "lm", num_values: int = 1
    ) -> ModelConfig:
        """From a config.json dict (pydantic's ValidationError names a bad field)."""
        return cls.of(ArchitectureConfig.from_hf_config(cfg), head, num_values)

    @property
    def rope_theta(self) -> float:
        return self.arch.rope_theta

    @property
    def rms_norm_eps(self) -> float:
        return self.arch.rms_norm_eps


def architecture_mismatch(actual: ArchitectureConfig, expected: ArchitectureConfig) -> str | None:
    """The first architecture field where a checkpoint differs from what was planned, as text."""
    a, e = actual.to_hf_config(), expected.to_hf_config()
    for name in COMPARED_FIELDS:
        left, right = a[name], e[name]
        if isinstance(left, float) or isinstance(right, float):
            assert isinstance(left, int | float) and isinstance(right, int | float)
            same = abs(float(left) - float(right)) <= 1e-9 * max(1.0, abs(float(right)))
        else:
            same = left == right
        if not same:
            return f"{name} is {left!r}, expected {right!r}"
    return None
