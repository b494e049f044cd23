"""Hugging Face checkpoints: round trips, per-rank slices, and clear one-line errors."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors import safe_open

from rlhf_operator.contract.sharding import Layout, ModelShape, rank_shards, region_numel
from rlhf_worker.model import CheckpointError, load_shards, save_pretrained
from rlhf_worker.model import checkpoint as checkpoint_module
from rlhf_worker.model.checkpoint import read_architecture
from rlhf_worker.model.tiny import (
    build_tiny_model,
    init_full_state,
    tiny_architecture,
    tiny_hf_config,
)

SINGLE = Layout(ranks=(0,))


def full_state(model_dir: Path) -> dict[str, torch.Tensor]:
    with safe_open(str(model_dir / "model.safetensors"), framework="pt") as f:
        return {name: f.get_tensor(name) for name in f.keys()}  # noqa: SIM118


def test_save_then_load_round_trips_exactly(tmp_path: Path, tiny_lm_dir: Path) -> None:
    config, shards = load_shards(tiny_lm_dir, SINGLE, 0, expected=tiny_architecture())
    assert [p.name for p in config.shape.params()] == list(shards)
    save_pretrained(tmp_path, tiny_hf_config(), shards)
    before, after = full_state(tiny_lm_dir), full_state(tmp_path)
    assert before.keys() == after.keys()
    for name in before:
        assert torch.equal(before[name], after[name]), name


def test_checkpoint_saved_by_transformers_loads_by_slice(tmp_path: Path, tiny_lm_dir: Path) -> None:
    transformers = pytest.importorskip("transformers")
    hf = transformers.AutoModelForCausalLM.from_pretrained(tiny_lm_dir, dtype=torch.float32)
    hf.save_pretrained(tmp_path, max_shard_size="1MB")  # several files and an index
    assert (tmp_path / "model.safetensors.index.json").is_file()
    full = full_state(tiny_lm_dir)
    layout = Layout(ranks=(0, 1, 2, 3), pp=2, tp=2)
    for rank in layout.ranks:
        _, shards = load_shards(tmp_path, layout, rank, expected=tiny_architecture())
        regions = rank_shards(ModelShape.from_hf_config(tiny_hf_config()), layout, rank)
        assert shards.keys() == regions.keys()
        for name, region in regions.items():
            index = tuple(slice(a, b) for a, b in region)
            assert torch.equal(shards[name], full[name][index]), name


def test_a_rank_reads_only_its_slices(monkeypatch: pytest.MonkeyPatch, tiny_lm_dir: Path) -> None:
    read: list[int] = []

    class CountingSlice:
        def __init__(self, inner: Any) -> None:
            self.inner = inner

        def get_shape(self) -> list[int]:
            return list(self.inner.get_shape())

        def __getitem__(self, index: Any) -> torch.Tensor:
            out = self.inner[index]
            read.append(out.numel())
            return out

    class CountingFile:
        def __init__(self, path: str, framework: str) -> None:
            self.inner = safe_open(path, framework=framework)

        def __enter__(self) -> CountingFile:
            self.handle = self.inner.__enter__()
            return self

        def __exit__(self, *exc: object) -> None:
            self.inner.__exit__(*exc)

        def keys(self) -> list[str]:
            return list(self.handle.keys())

        def get_slice(self, name: str) -> CountingSlice:
            return CountingSlice(self.handle.get_slice(name))

    monkeypatch.setattr(checkpoint_module, "safe_open", CountingFile)
    shape = ModelShape.from_hf_config(tiny_hf_config())
    layout = Layout(ranks=(0, 1, 2, 3), pp=2, tp=2)
    load_shards(tiny_lm_dir, layout, 3)
    wanted = sum(region_numel(r) for r in rank_shards(shape, layout, 3).values())
    assert sum(read) == wanted
    assert wanted < sum(p.numel for p in shape.params()) / 3


def test_value_head_missing_from_a_causal_lm_is_initialised_deterministically(
    tiny_lm_dir: Path,
) -> None:
    layout = Layout(ranks=(0, 1), tp=2)
    _, a = load_shards(tiny_lm_dir, layout, 0, head="value")
    _, b = load_shards(tiny_lm_dir, layout, 1, head="value")
    assert "lm_head.weight" not in a
    assert a["score.weight"].shape == (1, 256)
    assert torch.equal(a["score.weight"], b["score.weight"])


def write_model(root: Path, **changes: Any) -> Path:
    cfg = tiny_hf_config()
    cfg.update(num_hidden_layers=1)
    build_tiny_model(root, cfg, seed=0)
    if changes:
        on_disk = json.loads((root / "config.json").read_text())
        on_disk.update(changes)
        (root / "config.json").write_text(json.dumps(on_disk))
    return root


def expect_error(match: str, *args: Any, **kwargs: Any) -> str:
    with pytest.raises(CheckpointError, match=match) as info:
        load_shards(*args, **kwargs)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_missing_directory(tmp_path: Path) -> None:
    message = expect_error("no such file", tmp_path / "nowhere", SINGLE, 0)
    assert "config.json" in message


def test_architecture_mismatch_names_the_field(tmp_path: Path) -> None:
    root = write_model(tmp_path)
    expected = tiny_architecture(num_hidden_layers=1, hidden_size=128)
    message = expect_error("hidden_size is 256, expected 128", root, SINGLE, 0, expected=expected)
    assert str(root / "config.json") in message
    qwen = tiny_architecture(num_hidden_layers=1, model_type="qwen2")
    expect_error("model_type is 'llama', expected 'qwen2'", root, SINGLE, 0, expected=qwen)


def test_tensor_of_the_wrong_shape(tmp_path: Path) -> None:
    root = write_model(tmp_path, intermediate_size=256)  # config says 256, tensors hold 512
    message = expect_error(r"has shape \[512, 256\], expected \[256, 256\]", root, SINGLE, 0)
    assert "model.safetensors" in message and "gate_proj" in message


def test_missing_tensor_and_unreadable_files(tmp_path: Path) -> None:
    root = write_model(tmp_path / "a")
    state = init_full_state({**tiny_hf_config(), "num_hidden_layers": 1}, seed=0)
    del state["model.norm.weight"]
    from safetensors.torch import save_file

    save_file(state, str(root / "model.safetensors"))
    expect_error("model.norm.weight is missing", root, SINGLE, 0)
    (root / "model.safetensors").write_text("not safetensors")
    expect_error("model.safetensors: not a safetensors file", root, SINGLE, 0)
    (root / "config.json").write_text("{")
    expect_error("config.json: not readable JSON", root, SINGLE, 0)
    write_model(tmp_path / "b", model_type="gpt2")
    expect_error("model_type 'gpt2' is not supported", tmp_path / "b", SINGLE, 0)


def test_a_config_json_is_read_as_the_api_reads_an_architecture(tmp_path: Path) -> None:
    # A field config.json leaves out takes Hugging Face's default, which is the API's too.
    root = write_model(tmp_path / "a")
    on_disk = json.loads((root / "config.json").read_text())
    del on_disk["rms_norm_eps"]
    (root / "config.json").write_text(json.dumps(on_disk))
    assert read_architecture(root).rms_norm_eps == 1e-6
    # The tiny preset says 1e-5 (as Llama 2's config.json does): the plan and the file disagree.
    planned = tiny_architecture(num_hidden_layers=1)
    expect_error("rms_norm_eps is 1e-06, expected 1e-05", root, SINGLE, 0, expected=planned)
    # A bad or missing field is named as config.json names it.
    write_model(tmp_path / "b", num_attention_heads=0)
    expect_error(
        "config.json: num_attention_heads: Input should be greater", tmp_path / "b", SINGLE, 0
    )
    missing = write_model(tmp_path / "c")
    on_disk = json.loads((missing / "config.json").read_text())
    del on_disk["num_hidden_layers"]
    (missing / "config.json").write_text(json.dumps(on_disk))
    expect_error("config.json: num_hidden_layers: Field required", missing, SINGLE, 0)
