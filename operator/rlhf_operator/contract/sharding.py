"""Which slice of which parameter each rank holds under a layout, and the model shape.

Pure and torch-free, part of the contract both sides share: the operator's
planner counts parameters and bytes with it, the workers build their local
shards with it and the reallocation planner finds what each destination rank
lacks with it. The conventions, fixed here once:

* A layout places a role on an ordered tuple of global ranks (its mesh, in
  node-major then device order), arranged pp-major, then dp, then tp innermost:
  ``rank(p, d, t) = ranks[(p * dp + d) * tp + t]``. Tensor-parallel groups are
  therefore adjacent devices (inside one node), as Megatron does.
* Pipeline stages get consecutive decoder layers, balanced, the earlier stages
  taking the remainder (``stage_layers``). The embedding lives on the first
  stage; the final norm and the head (lm_head, or the critic/reward `score`) on
  the last. With tied embeddings the embedding matrix lives on both the first
  and the last stage.
* Tensor parallelism splits contiguously (Megatron style): q/k/v, gate/up and
  the vocabulary of embed_tokens/lm_head along dim 0 (column parallel; q/k/v
  rows are head-major, so each rank gets whole heads and, with grouped-query
  attention, the key/value heads its query heads use); o_proj and down_proj
  along dim 1 (row parallel). Norms and the scalar `score` head are replicated.
* Data-parallel replicas hold identical shards.
* Row-parallel weights (split along dim 1) are stored column-major: a shard is
  the transpose of a contiguous tensor (the worker's ``model/storage.py``). A
  tensor-parallel slice of one is then one contiguous block of memory, as a
  slice of a column-parallel weight is, so reallocation sends and receives every
  weight slice in place rather than gathering or scattering its rows. The
  computations do not care (``F.linear`` takes either order); files on disk stay
  row-major.

The model shape (``ModelShape``) is derived from the API's ``ArchitectureConfig``
(``from_architecture``; ``from_hf_config`` reads a config.json through it), so a
manifest's architecture, a checkpoint's config and the planner's counts are one
set of numbers with one set of defaults. Parameter names are the Hugging Face ones
(LlamaForCausalLM / Qwen2ForCausalLM, and `score.weight` of
*ForSequenceClassification for value/reward heads), so a real checkpoint maps 1:1.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from typing import Any, Literal

from ..api.models import ArchitectureConfig

# A region of a full tensor: (start, stop) along each dimension.
Region = tuple[tuple[int, int], ...]
HeadKind = Literal["lm", "value"]


@dataclass(frozen=True)
class ParamSpec:
    """One parameter of the full (unsharded) model."""

    name: str
    shape: tuple[int, ...]
    layer: int | None  # decoder layer index, None for embedding / final norm / head
    tp_dim: int | None  # dimension split by tensor parallelism, None if replicated
    place: Literal["first", "layer", "last", "first_and_last"]

    @property
    def numel(self) -> int:
        n = 1
        for s in self.shape:
            n *= s
        return n

    @property
    def column_major(self) -> bool:
        """Whether shards of this parameter are stored column-major (row-parallel weights)."""
        return self.tp_dim == 1 and len(self.shape) == 2


@dataclass(frozen=True)
class ParamCounts:
    """Parameter elements by where they live: what the planner's estimates add up.

    *split* parameters are cut by tensor parallelism (a rank holds 1/tp of them),
    *replicated* ones are whole on every rank. The first stage holds the
    embedding, the last the final norm and the head; with tied embeddings the
    embedding is counted on both ends (exact for pp > 1, one copy too many at pp = 1).
    """

    layer_split: int  # per decoder layer
    layer_replicated: int  # per decoder layer: its two norms
    first_split: int  # the embedding
    last_split: int  # lm_head, or the tied embedding's copy; 0 for a value head
    last_replicated: int  # the final norm, and a value head's `score`
    layer_tensors: int = 0  # parameter tensors per decoder layer


@dataclass(frozen=True)
class ModelShape:
    """The architecture numbers sharding depends on (derive it with ``from_architecture``)."""

    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    vocab_size: int
    tie_word_embeddings: bool = False
    qkv_bias: bool = False  # Qwen2 has biases on q/k/v
    head: HeadKind = "lm"  # "value": a `score` head (critic, reward) instead of lm_head
    # Outputs of the value head: 1, or 2 for the Safe-RLHF critic (reward value, cost value).
    num_values: int = 1

    @classmethod
    def from_architecture(
        cls, arch: ArchitectureConfig, head: HeadKind = "lm", num_values: int = 1
    ) -> ModelShape:
        """The shape of a model of this architecture with an lm or a value head."""
        return cls(
            hidden_size=arch.hidden_size,
            intermediate_size=arch.intermediate_size,
            num_layers=arch.num_hidden_layers,
            num_heads=arch.num_attention_heads,
            num_kv_heads=arch.kv_heads,
            head_dim=arch.head_size,
            vocab_size=arch.vocab_size,
            tie_word_embeddings=arch.tie_word_embeddings,
            qkv_bias=arch.model_type == "qwen2",
            head=head,
            num_values=num_values,
        )

    @classmethod
    def from_hf_config(
        cls, cfg: Mapping[str, Any], head: HeadKind = "lm", num_values: int = 1
    ) -> ModelShape:
        """From a Hugging Face config.json dict (read as an ``ArchitectureConfig``)."""
        return cls.from_architecture(ArchitectureConfig.from_hf_config(cfg), head, num_values)

    def params(self) -> list[ParamSpec]:
        """Every parameter, in Hugging Face state_dict order."""
        first, last = self._outer_params()
        out = list(first)
        for n in range(self.num_layers):
            out += self._layer_params(n)
        return out + last

    def _layer_params(self, n: int) -> list[ParamSpec]:
        h, i = self.hidden_size, self.intermediate_size
        q_out, kv_out = self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim
        pre = f"model.layers.{n}."
        out = [
            ParamSpec(pre + "self_attn.q_proj.weight", (q_out, h), n, 0, "layer"),
            ParamSpec(pre + "self_attn.k_proj.weight", (kv_out, h), n, 0, "layer"),
            ParamSpec(pre + "self_attn.v_proj.weight", (kv_out, h), n, 0, "layer"),
        ]
        if self.qkv_bias:
            out += [
                ParamSpec(pre + "self_attn.q_proj.bias", (q_out,), n, 0, "layer"),
                ParamSpec(pre + "self_attn.k_proj.bias", (kv_out,), n, 0, "layer"),
                ParamSpec(pre + "self_attn.v_proj.bias", (kv_out,), n, 0, "layer"),
            ]
        out += [
            ParamSpec(pre + "self_attn.o_proj.weight", (h, q_out), n, 1, "layer"),
            ParamSpec(pre + "mlp.gate_proj.weight", (i, h), n, 0, "layer"),
            ParamSpec(pre + "mlp.up_proj.weight", (i, h), n, 0, "layer"),
            ParamSpec(pre + "mlp.down_proj.weight", (h, i), n, 1, "layer"),
            ParamSpec(pre + "input_layernorm.weight", (h,), n, None, "layer"),
            ParamSpec(pre + "post_attention_layernorm.weight", (h,), n, None, "layer"),
        ]
        return out

    def _outer_params(self) -> tuple[list[ParamSpec], list[ParamSpec]]:
        """The parameters before the decoder layers (embedding) and after them (norm, head)."""
        h, v = self.hidden_size, self.vocab_size
        embed_place: Literal["first", "first_and_last"] = (
            "first_and_last" if self.tie_word_embeddings and self.head == "lm" else "first"
        )
        first = [ParamSpec("model.embed_tokens.weight", (v, h), None, 0, embed_place)]
        last = [ParamSpec("model.norm.weight", (h,), None, None, "last")]
        if self.head == "value":
            last.append(ParamSpec("score.weight", (self.num_values, h), None, None, "last"))
        elif not self.tie_word_embeddings:
            last.append(ParamSpec("lm_head.weight", (v, h), None, 0, "last"))
        return first, last

    @property
    def counts(self) -> ParamCounts:
        """Elements by stage and split, from the same parameter list the workers shard."""
        return _counts(self)

    def layout_problems(self, pp: int, tp: int) -> list[str]:
        """Why (pp, tp) cannot shard this model (empty if it can)."""
        problems = []
        for what, size in (
            ("attention heads", self.num_heads),
            ("key/value heads", self.num_kv_heads),
            ("intermediate size", self.intermediate_size),
            ("vocabulary", self.vocab_size),
        ):
            if size % tp:
                problems.append(f"tp {tp} does not divide the {what} ({size})")
        if pp > self.num_layers:
            problems.append(f"pp {pp} exceeds the {self.num_layers} layers")
        return problems


@cache  # the planner asks for the same few shapes' counts in its inner loops
def _counts(shape: ModelShape) -> ParamCounts:
    layer = shape._layer_params(0) if shape.num_layers else []
    first, last = shape._outer_params()
    on_first = [p for p in first + last if p.place in ("first", "first_and_last")]
    on_last = [p for p in first + last if p.place in ("last", "first_and_last")]
    return ParamCounts(
        layer_split=sum(p.numel for p in layer if p.tp_dim is not None),
        layer_replicated=sum(p.numel for p in layer if p.tp_dim is None),
        first_split=sum(p.numel for p in on_first if p.tp_dim is not None),
        last_split=sum(p.numel for p in on_last if p.tp_dim is not None),
        last_replicated=sum(p.numel for p in on_last if p.tp_dim is None),
        layer_tensors=len(layer),
    )


# Roles whose model ends in a value head (`score`) instead of the vocabulary head.
VALUE_HEAD_ROLES = ("critic", "reward", "cost")


def role_head(role: str) -> HeadKind:
    """Actor and reference are language models; critic, reward and cost have a value head."""
    return "value" if role in VALUE_HEAD_ROLES else "lm"


def role_values(role: str, algorithm: str) -> int:
    """Outputs of a role's value head: Safe-RLHF's critic predicts reward and cost values."""
    return 2 if role == "critic" and algorithm == "safe-rlhf" else 1


def role_shape(role: str, arch: ArchitectureConfig, algorithm: str) -> ModelShape:
    """The shape of a role's model in a job: its architecture with the role's head."""
    return ModelShape.from_architecture(arch, role_head(role), role_values(role, algorithm))


@dataclass(frozen=True)
class Layout:
    """A role placed on global ranks arranged as (pp, dp, tp), tp innermost."""

    ranks: tuple[int, ...]
    pp: int = 1
    dp: int = 1
    tp: int = 1

    def __post_init__(self) -> None:
        if min(self.pp, self.dp, self.tp) < 1:
            raise ValueError(f"pp, dp and tp must be >= 1, got {self.pp}, {self.dp}, {self.tp}")
        if len(self.ranks) != self.pp * self.dp * self.tp:
            raise ValueError(
                f"layout pp={self.pp} dp={self.dp} tp={self.tp} needs "
                f"{self.pp * self.dp * self.tp} ranks, got {len(self.ranks)}"
            )
        if len(set(self.ranks)) != len(self.ranks):
            raise ValueError(f"layout ranks repeat: {self.ranks}")

    @property
    def size(self) -> int:
        return len(self.ranks)

    def rank(self, p: int, d: int, t: int) -> int:
        return self.ranks[(p * self.dp + d) * self.tp + t]

    def coords(self, rank: int) -> tuple[int, int, int]:
        """(p, d, t) of a global rank; raises ValueError if it is not in the layout."""
        index = self.ranks.index(rank)
        return index // (self.dp * self.tp), (index // self.tp) % self.dp, index % self.tp

    def tp_group(self, p: int, d: int) -> tuple[int, ...]:
        return tuple(self.rank(p, d, t) for t in range(self.tp))

    def dp_group(self, p: int, t: int) -> tuple[int, ...]:
        return tuple(self.rank(p, d, t) for d in range(self.dp))

    def pp_group(self, d: int, t: int) -> tuple[int, ...]:
        return tuple(self.rank(p, d, t) for p in range(self.pp))


def stage_layers(num_layers: int, pp: int, stage: int) -> range:
    """Decoder layers of one pipeline stage: consecutive, balanced, earlier stages take the rest."""
    base, extra = divmod(num_layers, pp)
    start = stage * base + min(stage, extra)
    return range(start, start + base + (1 if stage < extra else 0))


def param_stages(param: ParamSpec, num_layers: int, pp: int) -> tuple[int, ...]:
    """The pipeline stages that hold a parameter."""
    if param.place == "first":
        return (0,)
    if param.place == "last":
        return (pp - 1,)
    if param.place == "first_and_last":
        return (0,) if pp == 1 else (0, pp - 1)
    assert param.layer is not None
    for stage in range(pp):
        if param.layer in stage_layers(num_layers, pp, stage):
            return (stage,)
    raise ValueError(f"layer {param.layer} is outside {num_layers} layers")


def shard_region(param: ParamSpec, tp: int, t: int) -> Region:
    """The region of the full tensor tensor-parallel rank t holds."""
    region = [(0, size) for size in param.shape]
    if param.tp_dim is not None and tp > 1:
        size = param.shape[param.tp_dim]
        if size % tp:
            raise ValueError(
                f"{param.name}: dim {param.tp_dim} of size {size} not divisible by tp {tp}"
            )
        part = size // tp
        region[param.tp_dim] = (t * part, (t + 1) * part)
    return tuple(region)


def region_numel(region: Region) -> int:
    n = 1
    for start, stop in region:
        n *= max(0, stop - start)
    return n


def rank_shards(model: ModelShape, layout: Layout, rank: int) -> dict[str, Region]:
    """Every parameter a rank holds under a layout, with the region of the full tensor it holds."""
    p, _, t = layout.coords(rank)
    return {
        param.name: shard_region(param, layout.tp, t)
        for param in model.params()
        if p in param_stages(param, model.num_layers, layout.pp)
    }


def vllm_layout_problem(layout: Layout, world_size: int) -> str | None:
    """Why vLLM cannot generate under this layout of a job of `world_size` ranks, or None.

    One engine per dp replica. vLLM has no pipeline stages of its own here (pp=1).
    With tp>1 the replicas' ranks are one tensor-parallel vLLM engine each, launched
    inside the job's torch.distributed world (vLLM's "external launcher"): vLLM then
    builds its groups over the whole world from consecutive ranks, so the layout
    must span every worker, in rank order, for vLLM's tp groups to be the layout's.
    """
    if layout.pp != 1:
        return f"the generation layout must have pp=1, got pp={layout.pp}"
    if layout.tp > 1 and layout.ranks != tuple(range(world_size)):
        return (
            f"with tp={layout.tp} the generation layout must span all {world_size} workers in "
            f"rank order (vLLM's tensor-parallel groups are consecutive ranks of the whole "
            f"world), got ranks {list(layout.ranks)}"
        )
    return None
