"""The sharding conventions: every parameter is covered exactly once per replica."""

from __future__ import annotations

import itertools

import pytest

from rlhf_worker.sharding import (
    Layout,
    ModelShape,
    param_stages,
    rank_shards,
    region_numel,
    stage_layers,
)

TINY = ModelShape(
    hidden_size=64,
    intermediate_size=128,
    num_layers=5,
    num_heads=8,
    num_kv_heads=4,
    head_dim=8,
    vocab_size=96,
)


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
