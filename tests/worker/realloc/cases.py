"""Models, reference weights and random layout pairs shared by the reallocation tests."""

from __future__ import annotations

import random
from dataclasses import replace

from rlhf_operator.contract.sharding import Layout, ModelShape, Region
from rlhf_worker.model.tiny import SMALL, tiny_shape

GQA = tiny_shape(**SMALL)
# tp 2, 3, 4 and 6 all shard it, so tp sizes that do not divide each other meet; Qwen2's
# q/k/v biases are split with their rows.
ODD_TP = tiny_shape(
    model_type="qwen2",
    hidden_size=24,
    intermediate_size=36,
    num_hidden_layers=4,
    num_attention_heads=12,
    num_key_value_heads=12,
    head_dim=2,
    vocab_size=36,
)
MODELS = {
    "gqa": GQA,
    "gqa_tied": replace(GQA, tie_word_embeddings=True),
    "gqa_value": replace(GQA, head="value"),
    "odd_tp": ODD_TP,
    "odd_tp_tied": replace(ODD_TP, tie_word_embeddings=True, num_layers=5),
}


def reference_weights(model: ModelShape, seed: int) -> dict[str, object]:
    """Full random weights, identical in every process (torch imported lazily)."""
    import torch

    out: dict[str, object] = {}
    for index, param in enumerate(model.params()):
        gen = torch.Generator().manual_seed(seed * 1000 + index)
        out[param.name] = torch.randn(param.shape, generator=gen)
    return out


def slices(region: Region) -> tuple[slice, ...]:
    return tuple(slice(a, b) for a, b in region)


def random_layout(rng: random.Random, model: ModelShape, pool: list[int], max_size: int) -> Layout:
    """A random layout that shards the model, on ranks drawn from ``pool``."""
    while True:
        tp = rng.choice([1, 2, 3, 4, 6])
        pp = rng.choice([1, 1, 2, 3])
        dp = rng.choice([1, 1, 2, 3, 4])
        size = tp * pp * dp
        if size > min(max_size, len(pool)) or model.layout_problems(pp=pp, tp=tp):
            continue
        return Layout(tuple(rng.sample(pool, size)), pp=pp, dp=dp, tp=tp)


def random_pairs(seed: int, count: int, world: int) -> list[tuple[str, Layout, Layout]]:
    """(model name, src, dst) on a world of ``world`` ranks, cycling identical,
    overlapping and disjoint meshes."""
    rng = random.Random(seed)
    out = []
    names = sorted(MODELS)
    for i in range(count):
        name = names[i % len(names)]
        model = MODELS[name]
        kind = ("identical", "overlapping", "disjoint")[i % 3]
        ranks = list(range(world))
        if kind == "disjoint":
            src = random_layout(rng, model, ranks, world // 2 if rng.random() < 0.5 else world - 1)
            rest = [r for r in ranks if r not in src.ranks]
            dst = random_layout(rng, model, rest, len(rest))
        elif kind == "identical":
            src = random_layout(rng, model, ranks, world)
            dst = _same_mesh_layout(rng, model, src)
        else:
            src = random_layout(rng, model, ranks, world)
            dst = random_layout(rng, model, ranks, world)
        out.append((name, src, dst))
    return out


def _same_mesh_layout(rng: random.Random, model: ModelShape, src: Layout) -> Layout:
    """Another (pp, dp, tp) on exactly the source's ranks (in a possibly different order)."""
    n = src.size
    options = [
        (pp, n // (pp * tp), tp)
        for pp in (1, 2, 3)
        for tp in (1, 2, 3, 4, 6)
        if n % (pp * tp) == 0 and not model.layout_problems(pp=pp, tp=tp)
    ]
    pp, dp, tp = rng.choice(options)
    ranks = list(src.ranks)
    if rng.random() < 0.5:
        rng.shuffle(ranks)
    return Layout(tuple(ranks), pp=pp, dp=dp, tp=tp)
