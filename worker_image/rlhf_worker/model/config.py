"""The decoder's configuration, read from a Hugging Face config.json dict."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from rlhf_worker.sharding import HeadKind, ModelShape

# The config.json fields that fix the architecture, and their defaults when absent.
ARCHITECTURE_FIELDS: dict[str, Any] = {
    "model_type": "llama",
    "hidden_size": None,
    "intermediate_size": None,
    "num_hidden_layers": None,
    "num_attention_heads": None,
    "num_key_value_heads": None,
    "head_dim": None,
    "vocab_size": None,
    "rope_theta": 10000.0,
    "rms_norm_eps": 1e-6,
    "tie_word_embeddings": False,
}


@dataclass(frozen=True)
class ModelConfig:
    """Everything the decoder's math needs: the shape plus RoPE and norm constants."""

    shape: ModelShape
    model_type: str = "llama"
    rope_theta: float = 10000.0
    rms_norm_eps: float = 1e-6
    max_position_embeddings: int = 4096

    @classmethod
    def from_hf(cls, cfg: Mapping[str, Any], head: HeadKind = "lm") -> ModelConfig:
        rope_theta = cfg.get("rope_theta")
        if rope_theta is None:  # transformers 5 may nest it under rope_parameters
            rope_theta = (cfg.get("rope_parameters") or {}).get("rope_theta", 10000.0)
        return cls(
            shape=ModelShape.from_hf_config(cfg, head=head),
            model_type=str(cfg.get("model_type", "llama")),
            rope_theta=float(rope_theta),
            rms_norm_eps=float(cfg.get("rms_norm_eps", 1e-6)),
            max_position_embeddings=int(cfg.get("max_position_embeddings", 4096)),
        )


def normalized_architecture(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """The architecture fields of a config.json dict, defaults filled in, for comparison."""
    out = {name: cfg.get(name, default) for name, default in ARCHITECTURE_FIELDS.items()}
    if out["num_key_value_heads"] is None:
        out["num_key_value_heads"] = out["num_attention_heads"]
    if out["head_dim"] is None and out["hidden_size"] and out["num_attention_heads"]:
        out["head_dim"] = out["hidden_size"] // out["num_attention_heads"]
    if "rope_theta" not in cfg and "rope_parameters" in cfg:
        out["rope_theta"] = (cfg["rope_parameters"] or {}).get("rope_theta", 10000.0)
    return out


def architecture_mismatch(actual: Mapping[str, Any], expected: Mapping[str, Any]) -> str | None:
    """The first architecture field where a checkpoint differs from what was planned, as text."""
    a, e = normalized_architecture(actual), normalized_architecture(expected)
    for name in ARCHITECTURE_FIELDS:
        if name not in expected and name not in ("num_key_value_heads", "head_dim"):
            continue  # the plan did not say; the checkpoint decides
        left, right = a[name], e[name]
        if isinstance(left, float) or isinstance(right, float):
            same = (
                left is not None
                and right is not None
                and abs(float(left) - float(right)) <= (1e-9 * max(1.0, abs(float(right))))
            )
        else:
            same = left == right
        if not same:
            return f"{name} is {left!r}, expected {right!r}"
    return None
