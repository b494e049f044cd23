"""The sharding conventions: every parameter is covered exactly once per replica; the model
shape derives from the API's architecture and counts what the planner estimates with."""

from __future__ import annotations

import itertools

import pytest

from rlhf_operator.api.models import PRESETS
from rlhf_operator.contract.sharding import (
    Layout,
    ModelShape,
    param_stages,
    rank_shards,
    region_numel,
    stage_layers,
)

# The tiny preset: grouped-query attention (8 query heads over 4 key/value heads), 4 layers.
TINY = ModelShape.from_architecture(PRESETS["tiny"])


def test_layout_rank_order_is_pp_then_dp_then_tp() -> None:
    layout = Layout(ranks=(10, 11, 12, 13, 14, 15, 16, 17), pp=2, dp=2, tp=2)
    assert layout.rank(0, 0, 0) == 10
    assert layout.rank(0, 0, 1) == 11
    assert layout.rank(0, 1, 0) == 12
    assert layout.rank(1, 0, 0) == 14
    for rank in layout.ranks:
        assert layout.rank(*layout.coords(rank)) == rank
    assert layout.tp_group(1, 1) == (16, 17)
    assert layout.dp_group(0, 1) == (11, 13)
    assert layout.pp_group(1, 0) == (12, 16)


def test_layout_rejects_wrong_rank_count() -> None:
    with pytest.raises(ValueError, match="needs 4 ranks"):
        Layout(ranks=(0, 1, 2), dp=2, tp=2)


def test_stages_are_balanced_and_earlier_ones_take_the_remainder() -> None:
    assert [stage_layers(10, 3, s) for s in range(3)] == [range(0, 4), range(4, 7), range(7, 10)]


@pytest.mark.parametrize("layers,pp", [(5, 1), (5, 2), (5, 3), (4, 4), (7, 2)])
def test_stages_partition_layers(layers: int, pp: int) -> None:
    covered = [n for s in range(pp) for n in stage_layers(layers, pp, s)]
    assert covered == list(range(layers))
    sizes = [len(stage_layers(layers, pp, s)) for s in range(pp)]
    assert max(sizes) - min(sizes) <= 1


@pytest.mark.parametrize(("pp", "dp", "tp"), list(itertools.product([1, 2], [1, 2], [1, 2, 4])))
@pytest.mark.parametrize("head", ["lm", "value"])
def test_each_replica_covers_every_parameter_exactly_once(
    pp: int, dp: int, tp: int, head: str
) -> None:
    model = ModelShape(**{**TINY.__dict__, "head": head})
    layout = Layout(ranks=tuple(range(pp * dp * tp)), pp=pp, dp=dp, tp=tp)
    for d in range(dp):
        regions: dict[str, set[tuple[tuple[int, int], ...]]] = {}
        for p in range(pp):
            for t in range(tp):
                for name, region in rank_shards(model, layout, layout.rank(p, d, t)).items():
                    regions.setdefault(name, set()).add(region)
        for param in model.params():
            distinct = sorted(regions[param.name])
            # The distinct regions tile the tensor: sizes add up and ranges do not overlap.
            assert sum(region_numel(r) for r in distinct) == param.numel
            if param.tp_dim is None or tp == 1:
                assert distinct == [tuple((0, n) for n in param.shape)]
            else:
                spans = sorted(r[param.tp_dim] for r in distinct)
                assert len(spans) == tp
                assert all(a[1] == b[0] for a, b in itertools.pairwise(spans))


def test_tied_embeddings_live_on_first_and_last_stage() -> None:
    model = ModelShape(**{**TINY.__dict__, "tie_word_embeddings": True})
    embed = next(p for p in model.params() if p.name == "model.embed_tokens.weight")
    assert param_stages(embed, model.num_layers, 3) == (0, 2)
    assert "lm_head.weight" not in {p.name for p in model.params()}


def test_from_hf_config_and_layout_problems() -> None:
    cfg = {
        "model_type": "qwen2",
        "hidden_size": 3584,
        "intermediate_size": 18944,
        "num_hidden_layers": 28,
        "num_attention_heads": 28,
        "num_key_value_heads": 4,
        "vocab_size": 152064,
    }
    model = ModelShape.from_hf_config(cfg)
    assert model.head_dim == 128 and model.qkv_bias
    assert model.layout_problems(pp=2, tp=4) == []
    assert any("key/value heads" in p for p in model.layout_problems(pp=1, tp=8))
    assert any("exceeds the 28 layers" in p for p in model.layout_problems(pp=29, tp=1))


def test_the_shape_derives_from_the_api_architecture() -> None:
    from rlhf_operator.api.models import ArchitectureConfig

    arch = PRESETS["qwen2.5-7b"]
    shape = ModelShape.from_architecture(arch)
    assert (shape.num_layers, shape.num_heads, shape.num_kv_heads) == (28, 28, 4)
    assert shape.head_dim == 128 and shape.qkv_bias
    # A config.json is read through the same type, with the same defaults as a manifest:
    # one rms_norm_eps default, whichever way the architecture arrives.
    bare = {k: v for k, v in arch.to_hf_config().items() if k != "rms_norm_eps"}
    read = ArchitectureConfig.from_hf_config(bare)
    assert read.rms_norm_eps == ArchitectureConfig.model_fields["rms_norm_eps"].default
    assert ModelShape.from_hf_config(bare) == shape
    nested = {**bare, "rope_parameters": {"rope_theta": 5e5}}
    del nested["rope_theta"]
    assert ArchitectureConfig.from_hf_config(nested).rope_theta == 5e5


@pytest.mark.parametrize("tied", [False, True])
@pytest.mark.parametrize("head", ["lm", "value"])
def test_counts_add_up_to_the_parameter_list(tied: bool, head: str) -> None:
    model = ModelShape(**{**TINY.__dict__, "tie_word_embeddings": tied, "head": head})
    counts = model.counts
    per_layer = [p for p in model.params() if p.layer == 0]
    assert counts.layer_split + counts.layer_replicated == sum(p.numel for p in per_layer)
    total = sum(p.numel for p in model.params())
    # The tied embedding is counted on both ends (as the planner's memory bound does).
    twice = model.vocab_size * model.hidden_size if tied and head == "lm" else 0
    layers = model.num_layers * (counts.layer_split + counts.layer_replicated)
    ends = counts.first_split + counts.last_split + counts.last_replicated
    assert layers + ends == total + twice
    assert counts.last_split == (0 if head == "value" else model.vocab_size * model.hidden_size)


def test_roles_get_their_head() -> None:
    from rlhf_operator.contract.sharding import role_head, role_shape

    assert [role_head(r) for r in ("actor", "ref", "critic", "reward", "cost")] == [
        "lm",
        "lm",
        "value",
        "value",
        "value",
    ]
    critic = role_shape("critic", PRESETS["tiny"], "safe-rlhf")
    assert critic.head == "value" and critic.num_values == 2
    assert role_shape("critic", PRESETS["tiny"], "ppo").num_values == 1
    score = next(p for p in critic.params() if p.name == "score.weight")
    assert score.shape == (2, PRESETS["tiny"].hidden_size)
