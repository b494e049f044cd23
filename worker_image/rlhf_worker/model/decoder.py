"""A Llama-architecture decoder stage holding one rank's shards of the parameters.

RMSNorm, RoPE (rotate-half, as Hugging Face stores q/k), grouped-query
attention, SwiGLU MLP, optional q/k/v bias (Qwen2); an ``lm`` head or a scalar
``value`` head (``score.weight``, as *ForSequenceClassification) for critic and
reward models. One module is one rank's piece under a layout: its pipeline
stage's layers, its tensor-parallel slices (whole heads, a slice of the MLP,
a slice of the vocabulary). The parameters are registered under their Hugging
Face names and ``local_state()`` returns those very tensors, so reallocation
can read and replace them in place.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from rlhf_operator.contract.sharding import rank_shards, stage_layers
from rlhf_worker.model.config import ModelConfig
from rlhf_worker.parallel.groups import ParallelContext
from rlhf_worker.parallel.tensor import copy_to_tp, reduce_from_tp, vocab_parallel_embedding


def rms_norm(x: Tensor, weight: Tensor, eps: float) -> Tensor:
    # In float32 like the reference implementation, then back to the activation dtype.
    dtype = x.dtype
    x32 = x.float()
    x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)
    return weight * x32.to(dtype)


def rope_cos_sin(positions: Tensor, head_dim: int, theta: float) -> tuple[Tensor, Tensor]:
    """cos and sin of shape [B, T, head_dim] for integer positions [B, T]."""
    exponents = torch.arange(0, head_dim, 2, dtype=torch.int64, device=positions.device)
    inv_freq = 1.0 / (theta ** (exponents.float() / head_dim))
    freqs = positions.float().unsqueeze(-1) * inv_freq
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos(), emb.sin()


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """x: [B, heads, T, head_dim]; cos/sin: [B, T, head_dim]."""
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos.unsqueeze(1).to(x.dtype) + rotated * sin.unsqueeze(1).to(x.dtype)


def attention_mask(key_valid: Tensor, query_index: Tensor, key_index: Tensor) -> Tensor:
    """Boolean [B, 1, Tq, Tk]: causal over cache indices, padding keys hidden.

    A query may always see itself, so padding queries get finite (unused) outputs.
    """
    causal = key_index.unsqueeze(0) <= query_index.unsqueeze(1)
    allowed = causal.unsqueeze(0) & key_valid.unsqueeze(1)
    itself = key_index.unsqueeze(0) == query_index.unsqueeze(1)
    return (allowed | itself.unsqueeze(0)).unsqueeze(1)


def keys_are_prefixes(key_valid: Tensor) -> bool:
    """Whether every row's valid keys come first (no left padding): then causal attention
    alone hides the invalid ones, which only follow (right padding, the cache's unused
    tail). One host sync per forward, not per layer."""
    valid = key_valid.bool()
    return bool((valid[:, 1:] <= valid[:, :-1]).all()) if valid.shape[1] > 1 else True


@dataclass
class KVCache:
    """Keys and values of this stage's layers for this rank's kv heads: [B, kv, S, head_dim]."""

    keys: dict[int, Tensor]
    values: dict[int, Tensor]


class Decoder(nn.Module):
    """One rank's shards of a decoder under a layout; parameters named as in Hugging Face."""

    def __init__(
        self, config: ModelConfig, ctx: ParallelContext, shards: Mapping[str, Tensor]
    ) -> None:
        super().__init__()
        self.config = config
        self.ctx = ctx
        shape = config.shape
        regions = rank_shards(shape, ctx.layout, ctx.rank)
        if set(shards) != set(regions):
            missing = sorted(set(regions) - set(shards))
            extra = sorted(set(shards) - set(regions))
            raise ValueError(f"shards do not match the layout: missing {missing}, extra {extra}")
        self._params: dict[str, nn.Parameter] = {}
        for name, region in regions.items():
            tensor = shards[name]
            want = tuple(stop - start for start, stop in region)
            if tuple(tensor.shape) != want:
                raise ValueError(f"{name}: shard shape {tuple(tensor.shape)}, expected {want}")
            param = tensor if isinstance(tensor, nn.Parameter) else nn.Parameter(tensor)
            self._register(name, param)
            self._params[name] = param
        self.layers = list(stage_layers(shape.num_layers, ctx.pp, ctx.stage))
        tp = ctx.tp
        self.local_heads = shape.num_heads // tp
        self.local_kv_heads = shape.num_kv_heads // tp
        self.vocab_start = ctx.tp_rank * (shape.vocab_size // tp)

    def _register(self, name: str, param: nn.Parameter) -> None:
        # A tree of plain modules so that named_parameters() gives the Hugging Face names.
        *path, leaf = name.split(".")
        module: nn.Module = self
        for part in path:
            child = module._modules.get(part)
            if child is None:
                child = nn.Module()
                module.add_module(part, child)
            module = child
        module.register_parameter(leaf, param)

    def local_state(self) -> dict[str, nn.Parameter]:
        """This rank's shards, by Hugging Face name: the module's own parameters, not copies."""
        return dict(self._params)

    @property
    def dtype(self) -> torch.dtype:
        return next(iter(self._params.values())).dtype

    @property
    def device(self) -> torch.device:
        return next(iter(self._params.values())).device

    def p(self, name: str) -> Tensor:
        return self._params[name]

    # -- the stage's computation -------------------------------------------------------

    def embed(self, tokens: Tensor) -> Tensor:
        return vocab_parallel_embedding(
            tokens, self.p("model.embed_tokens.weight"), self.vocab_start, self.ctx.tp_group
        )

    def run_layers(
        self,
        hidden: Tensor,
        positions: Tensor,
        key_valid: Tensor,
        cache: KVCache | None = None,
        cache_start: int = 0,
        recompute: bool = False,
    ) -> Tensor:
        """This stage's decoder layers. ``key_valid`` covers the keys: [B, cache_start + T].

        ``recompute`` (training under a plan that says so): each layer keeps only its input
        for the backward and runs its forward again there (non-reentrant
        ``torch.utils.checkpoint``, as torchtitan applies it per block). Its tensor-parallel
        collectives run again too, on every rank of the group in the same order.
        """
        cfg = self.config
        cos, sin = rope_cos_sin(positions, cfg.shape.head_dim, cfg.rope_theta)
        steps = hidden.shape[1]
        device = hidden.device
        mask = None
        # A mask where left padding must be hidden, or where queries start inside the
        # cache (is_causal aligns query 0 with key 0).
        if (steps > 1 and cache_start > 0) or not keys_are_prefixes(key_valid):
            query_index = torch.arange(cache_start, cache_start + steps, device=device)
            key_index = torch.arange(cache_start + steps, device=device)
            mask = attention_mask(key_valid.bool(), query_index, key_index)
        for layer in self.layers:
            if recompute and cache is None and torch.is_grad_enabled():
                hidden = checkpoint(
                    self._layer, layer, hidden, cos, sin, mask, None, 0, use_reentrant=False
                )
            else:
                hidden = self._layer(layer, hidden, cos, sin, mask, cache, cache_start)
        return hidden

    def _layer(
        self,
        n: int,
        h: Tensor,
        cos: Tensor,
        sin: Tensor,
        mask: Tensor | None,
        cache: KVCache | None,
        cache_start: int,
    ) -> Tensor:
        pre, eps, group = f"model.layers.{n}.", self.config.rms_norm_eps, self.ctx.tp_group
        hd = self.config.shape.head_dim
        x = copy_to_tp(rms_norm(h, self.p(pre + "input_layernorm.weight"), eps), group)
        bias = self.config.shape.qkv_bias
        q, k, v = (
            F.linear(
                x,
                self.p(f"{pre}self_attn.{w}_proj.weight"),
                self.p(f"{pre}self_attn.{w}_proj.bias") if bias else None,
            )
            for w in "qkv"
        )
        b, t = x.shape[:2]
        q = apply_rope(q.view(b, t, self.local_heads, hd).transpose(1, 2), cos, sin)
        k = apply_rope(k.view(b, t, self.local_kv_heads, hd).transpose(1, 2), cos, sin)
        v = v.view(b, t, self.local_kv_heads, hd).transpose(1, 2)
        if cache is not None:
            cache.keys[n][:, :, cache_start : cache_start + t] = k
            cache.values[n][:, :, cache_start : cache_start + t] = v
            k = cache.keys[n][:, :, : cache_start + t]
            v = cache.values[n][:, :, : cache_start + t]
        # Grouped-query attention in the kernel (enable_gqa): no key/value copies per head.
        # Without a mask the keys are causal and unpadded: is_causal lets SDPA pick its
        # flash/cuDNN kernels (which take no mask tensor). A decode step's one query sees
        # every key so far, so it needs neither. On CUDA a mask leaves only the
        # memory-efficient kernel, which takes no grouped keys: SDPA would fall back to its
        # math kernel ([B, H, L, S] scores kept for the backward), so there the keys and
        # values are repeated per query head instead (`saved_layer_bytes(kv_copies=)` in the
        # planner counts them).
        gqa = self.local_heads != self.local_kv_heads
        if gqa and mask is not None and q.device.type == "cuda":
            group_size = self.local_heads // self.local_kv_heads
            k, v = k.repeat_interleave(group_size, dim=1), v.repeat_interleave(group_size, dim=1)
            gqa = False
        causal = mask is None and t > 1
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, is_causal=causal, enable_gqa=gqa
        )
        out = out.transpose(1, 2).reshape(b, t, self.local_heads * hd)
        h = h + reduce_from_tp(F.linear(out, self.p(pre + "self_attn.o_proj.weight")), group)
        x = copy_to_tp(rms_norm(h, self.p(pre + "post_attention_layernorm.weight"), eps), group)
        gate = F.linear(x, self.p(pre + "mlp.gate_proj.weight"))
        up = F.linear(x, self.p(pre + "mlp.up_proj.weight"))
        down = F.linear(F.silu(gate) * up, self.p(pre + "mlp.down_proj.weight"))
        return h + reduce_from_tp(down, group)

    def lm_logits(self, hidden: Tensor) -> Tensor:
        """This rank's vocabulary slice of the logits: [..., vocab / tp] (last stage only)."""
        x = rms_norm(hidden, self.p("model.norm.weight"), self.config.rms_norm_eps)
        x = copy_to_tp(x, self.ctx.tp_group)
        name = (
            "model.embed_tokens.weight"
            if self.config.shape.tie_word_embeddings
            else "lm_head.weight"
        )
        return F.linear(x, self.p(name))

    def values(self, hidden: Tensor) -> Tensor:
        """Per-token scalar values [..., T] from the ``score`` head (last stage only)."""
        x = rms_norm(hidden, self.p("model.norm.weight"), self.config.rms_norm_eps)
        return F.linear(x, self.p("score.weight")).squeeze(-1)

    def new_cache(self, batch: int, max_len: int) -> KVCache:
        shape = (batch, self.local_kv_heads, max_len, self.config.shape.head_dim)
        like = next(iter(self._params.values()))
        return KVCache(
            keys={n: like.new_zeros(shape) for n in self.layers},
            values={n: like.new_zeros(shape) for n in self.layers},
        )


def positions_from_mask(mask: Tensor) -> Tensor:
    """RoPE positions that start at 0 at each sequence's first real token (left padding)."""
    return (mask.long().cumsum(-1) - 1).clamp(min=0)
