"""Model roles: where a model comes from and what its architecture is.

The operator plans a job without reading the model volume, so every model
states its architecture in the manifest, either as a named preset or as the
Hugging Face config fields inline. Workers check at load time that the
checkpoint on the volume matches what was planned.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, Literal

from pydantic import ConfigDict, Field

from .base import ApiModel, cel_rules

Dtype = Literal["bfloat16", "float16", "float32"]
ModelType = Literal["llama", "qwen2"]
Preset = Literal["tiny", "llama2-7b", "llama2-13b", "codellama-34b", "llama2-70b", "qwen2.5-7b"]

PositiveInt = Annotated[int, Field(ge=1)]
REWARD_FUNCTION_PATTERN = (
    r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z_][A-Za-z0-9_]*$"
)


class ArchitectureConfig(ApiModel):
    """The Hugging Face config fields the planner and the workers need (camelCase of config.json's names)."""

    model_type: ModelType = "llama"
    """Hugging Face model_type: llama (also Llama-2/3, CodeLlama, Mistral-style) or qwen2 (bias on q/k/v)."""
    hidden_size: Annotated[int, Field(ge=8, le=65536)]
    """hidden_size: width of the residual stream."""
    intermediate_size: Annotated[int, Field(ge=8, le=262144)]
    """intermediate_size: width of the SwiGLU MLP."""
    num_hidden_layers: Annotated[int, Field(ge=1, le=512)]
    """num_hidden_layers: number of decoder blocks."""
    num_attention_heads: Annotated[int, Field(ge=1, le=1024)]
    """num_attention_heads: query heads."""
    num_key_value_heads: Annotated[int | None, Field(ge=1, le=1024)] = None
    """num_key_value_heads: key/value heads for grouped-query attention; defaults to numAttentionHeads."""
    head_dim: Annotated[int | None, Field(ge=1, le=1024)] = None
    """head_dim: defaults to hiddenSize / numAttentionHeads."""
    vocab_size: Annotated[int, Field(ge=2, le=4194304)]
    """vocab_size: rows of the embedding and of the output head."""
    max_position_embeddings: Annotated[int, Field(ge=1, le=4194304)] = 4096
    """max_position_embeddings: longest sequence (prompt + response) the model supports."""
    rope_theta: Annotated[float, Field(gt=0)] = 10000.0
    """rope_theta: RoPE base frequency."""
    rms_norm_eps: Annotated[float, Field(gt=0, lt=1)] = 1e-6
    """rms_norm_eps: RMSNorm epsilon (default 1e-6, as Hugging Face's Llama and Qwen2 configs)."""
    tie_word_embeddings: bool = False
    """tie_word_embeddings: whether the output head shares the embedding matrix."""

    @property
    def kv_heads(self) -> int:
        return self.num_key_value_heads or self.num_attention_heads

    @property
    def head_size(self) -> int:
        return self.head_dim or self.hidden_size // self.num_attention_heads

    @classmethod
    def from_hf_config(cls, cfg: Mapping[str, Any]) -> ArchitectureConfig:
        """The architecture a Hugging Face config.json dict describes; a field it leaves out
        (or sets to null) takes this model's default, the same one a manifest gets.

        Raises pydantic's ValidationError (a ValueError) naming the field that is wrong.
        """
        values = {name: cfg[name] for name in cls.model_fields if cfg.get(name) is not None}
        if "rope_theta" not in values:  # transformers 5 may nest it under rope_parameters
            nested = (cfg.get("rope_parameters") or {}).get("rope_theta")
            if nested is not None:
                values["rope_theta"] = nested
        return cls.model_validate(values)

    def to_hf_config(self) -> dict[str, object]:
        """The dict a Hugging Face config.json holds for this architecture."""
        arch = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM"}[self.model_type]
        return {
            "architectures": [arch],
            "model_type": self.model_type,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads,
            "num_key_value_heads": self.kv_heads,
            "head_dim": self.head_size,
            "vocab_size": self.vocab_size,
            "max_position_embeddings": self.max_position_embeddings,
            "rope_theta": self.rope_theta,
            "rms_norm_eps": self.rms_norm_eps,
            "tie_word_embeddings": self.tie_word_embeddings,
            "hidden_act": "silu",
        }


# Published configurations (config.json of each model). `tiny` is for local
# CPU runs and tests: 8 query heads over 4 key/value heads so that grouped-query
# attention and tensor parallelism up to 4 are exercised.
PRESETS: dict[str, ArchitectureConfig] = {
    "tiny": ArchitectureConfig(
        hidden_size=256,
        intermediate_size=512,
        num_hidden_layers=4,
        num_attention_heads=8,
        num_key_value_heads=4,
        vocab_size=512,
        max_position_embeddings=1024,
        rms_norm_eps=1e-5,
    ),
    "llama2-7b": ArchitectureConfig(
        hidden_size=4096,
        intermediate_size=11008,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=32,
        vocab_size=32000,
        max_position_embeddings=4096,
        rms_norm_eps=1e-5,
    ),
    "llama2-13b": ArchitectureConfig(
        hidden_size=5120,
        intermediate_size=13824,
        num_hidden_layers=40,
        num_attention_heads=40,
        num_key_value_heads=40,
        vocab_size=32000,
        max_position_embeddings=4096,
        rms_norm_eps=1e-5,
    ),
    "codellama-34b": ArchitectureConfig(
        hidden_size=8192,
        intermediate_size=22016,
        num_hidden_layers=48,
        num_attention_heads=64,
        num_key_value_heads=8,
        vocab_size=32000,
        max_position_embeddings=16384,
        rope_theta=1_000_000.0,
        rms_norm_eps=1e-5,
    ),
    "llama2-70b": ArchitectureConfig(
        hidden_size=8192,
        intermediate_size=28672,
        num_hidden_layers=80,
        num_attention_heads=64,
        num_key_value_heads=8,
        vocab_size=32000,
        max_position_embeddings=4096,
        rms_norm_eps=1e-5,
    ),
    "qwen2.5-7b": ArchitectureConfig(
        model_type="qwen2",
        hidden_size=3584,
        intermediate_size=18944,
        num_hidden_layers=28,
        num_attention_heads=28,
        num_key_value_heads=4,
        vocab_size=152064,
        max_position_embeddings=32768,
        rope_theta=1_000_000.0,
        rms_norm_eps=1e-6,
    ),
}


class Architecture(ApiModel):
    """A model's architecture: a named preset, or the Hugging Face config fields inline. Exactly one."""

    model_config = ConfigDict(
        json_schema_extra=cel_rules(
            ("has(self.preset) != has(self.config)", "set exactly one of preset and config"),
        )
    )

    preset: Preset | None = None
    """A known published architecture."""
    config: ArchitectureConfig | None = None
    """The Hugging Face config fields, for models that are not presets."""

    def resolve(self) -> ArchitectureConfig:
        """The config this architecture stands for (the preset's, or the inline one)."""
        if self.config is not None:
            return self.config
        if self.preset is None:
            raise ValueError("architecture has neither preset nor config")
        return PRESETS[self.preset]


class TinySource(ApiModel):
    """A random-initialised model and a tokenizer built locally, for tests and local CPU runs."""

    seed: Annotated[int, Field(ge=0, le=2**31 - 1)] = 0
    """Seed of the random initialisation; the same seed gives the same weights."""


class ModelSource(ApiModel):
    """Where the weights come from: a Hugging Face directory on a volume, or a tiny model built locally. Exactly one."""

    model_config = ConfigDict(
        json_schema_extra=cel_rules(
            ("has(self.path) != has(self.tiny)", "set exactly one of path and tiny"),
        )
    )

    path: Annotated[str | None, Field(min_length=1, max_length=4096)] = None
    """Directory in Hugging Face layout (config.json, *.safetensors, tokenizer files) on a mounted volume."""
    tiny: TinySource | None = None
    """Build a random-initialised model from `architecture` and a locally trained tokenizer."""


class ModelSpec(ApiModel):
    """One model role of the job."""

    source: ModelSource
    """Where the weights come from."""
    architecture: Architecture
    """The architecture, known without reading the volume so the operator can plan."""
    dtype: Dtype = "bfloat16"
    """Compute dtype of the weights on the workers, on CPU as on GPU (the tiny examples use float32). A trained role in bfloat16 keeps fp32 master weights, gradients and AdamW moments; float16 cannot be trained (no loss scaling)."""
    trainable: bool | None = None
    """Whether the role is trained; defaults to the algorithm's choice (actor and critic trained, ref and reward frozen)."""


class RewardModelSpec(ApiModel):
    """A reward (or cost) role: a scoring model, or a Python function over (prompt, response) text. Exactly one."""

    model_config = ConfigDict(
        json_schema_extra=cel_rules(
            (
                "has(self.rewardFunction) != has(self.source)",
                "set exactly one of rewardFunction and source",
            ),
            (
                "has(self.source) == has(self.architecture)",
                "a model source needs an architecture, and an architecture needs a source",
            ),
        )
    )

    source: ModelSource | None = None
    """Where the scoring model's weights come from."""
    architecture: Architecture | None = None
    """The scoring model's architecture (a value head on this decoder)."""
    dtype: Dtype = "bfloat16"
    """Parameter dtype on the workers."""
    trainable: bool | None = None
    """Must stay false: reward and cost models are frozen."""
    reward_function: Annotated[
        str | None,
        Field(pattern=REWARD_FUNCTION_PATTERN, max_length=512),
    ] = None
    """`module:function` scoring (prompt, response) text, used instead of a reward model."""


class Models(ApiModel):
    """The job's models by role."""

    actor: ModelSpec
    """The policy being trained."""
    critic: ModelSpec | None = None
    """The value model (PPO, Safe-RLHF)."""
    ref: ModelSpec | None = None
    """The frozen reference policy for the KL penalty."""
    reward: RewardModelSpec | None = None
    """The reward model or reward function."""
    cost: RewardModelSpec | None = None
    """The cost model or cost function (Safe-RLHF)."""

    def present(self) -> dict[str, ModelSpec | RewardModelSpec]:
        """The roles that are set, by name."""
        roles: dict[str, ModelSpec | RewardModelSpec | None] = {
            "actor": self.actor,
            "critic": self.critic,
            "ref": self.ref,
            "reward": self.reward,
            "cost": self.cost,
        }
        return {name: spec for name, spec in roles.items() if spec is not None}
