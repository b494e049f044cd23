"""Which slice of which parameter each rank holds under a layout.

Pure and torch-free: the engines use it to build their local shards, the
reallocation planner uses it to find what each destination rank lacks, and the
operator's planner can count bytes with it. The conventions, fixed here once:

* A layout places a role on an ordered tuple of global ranks (its mesh, in
  node-major then device order), arranged pp-major, then dp, then tp innermost:
  ``rank(p, d, t) = ranks[(p * dp + d) * tp + t]``. Tensor-parallel groups are
  therefore adjacent devices (inside one node), as Megatron does.
* Pipeline stages get consecutive decoder layers, balanced, the earlier stages
  taking the remainder. The embedding lives on the first stage; the final norm
  and the head (lm_head, or the critic/reward `score`) on the last. With tied
  embeddings the embedding matrix lives on both the first and the last stage.
* Tensor parallelism splits contiguously (Megatron style): q/k/v, gate/up and
  the vocabulary of embed_tokens/lm_head along dim 0 (column parallel; q/k/v
  rows are head-major, so each rank gets whole heads and, with grouped-query
  attention, the key/value heads its query heads use); o_proj and down_proj
  along dim 1 (row parallel). Norms and the scalar `score` head are replicated.
* Data-parallel replicas hold identical shards.
* Row-parallel weights (split along dim 1) are stored column-major: a shard is
  the transpose of a contiguous tensor (``storage.py``). A tensor-parallel slice
  of one is then one contiguous block of memory, as a slice of a column-parallel
  weight is, so reallocation sends and receives every weight slice in place
  rather than gathering or scattering its rows. The computations do not care
  (``F.linear`` takes either order); files on disk stay row-major.

Parameter names are the Hugging Face ones (LlamaForCausalLM / Qwen2ForCausalLM,
and `score.weight` of *ForSequenceClassification for value/reward heads), so a
real checkpoint maps 1:1.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

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
class ModelShape:
    """The architecture numbers sharding depends on."""

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
    def from_hf_config(
        cls, cfg: Mapping[str, Any], head: HeadKind = "lm", num_values: int = 1
    ) -> ModelShape:
        """From a Hugging Face config.json dict."""
        heads = int(cfg["num_attention_heads"])
        hidden = int(cfg["hidden_size"])
        return cls(
            hidden_size=hidden,
            intermediate_size=int(cfg["intermediate_size"]),
            num_layers=int(cfg["num_hidden_layers"]),
            num_heads=heads,
            num_kv_heads=int(cfg.get("num_key_value_heads") or heads),
            head_dim=int(cfg.get("head_dim") or hidden // heads),
            vocab_size=int(cfg["vocab_size"]),
            tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)),
            qkv_bias=cfg.get("model_type") == "qwen2",
            head=head,
            num_values=num_values,
        )

    def params(self) -> list[ParamSpec]:
        """Every parameter, in Hugging Face state_dict order."""
        h, i, v = self.hidden_size, self.intermediate_size, self.vocab_size
        q_out, kv_out = self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim
        embed_place: Literal["first", "first_and_last"] = (
            "first_and_last" if self.tie_word_embeddings and self.head == "lm" else "first"
        )
        out = [ParamSpec("model.embed_tokens.weight", (v, h), None, 0, embed_place)]
        for n in range(self.num_layers):
            pre = f"model.layers.{n}."
            out += [
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
        out.append(ParamSpec("model.norm.weight", (h,), None, None, "last"))
        if self.head == "value":
            out.append(ParamSpec("score.weight", (self.num_values, h), None, None, "last"))
        elif not self.tie_word_embeddings:
            out.append(ParamSpec("lm_head.weight", (v, h), None, 0, "last"))
        return out

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
