"""Tiny models and tokenizers are built locally and load offline with transformers."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from rlhf_worker.model.tiny import build_tiny, init_full_state, tiny_hf_config


def test_same_seed_same_weights() -> None:
    cfg = {**tiny_hf_config(), "num_hidden_layers": 1}
    a, b, c = init_full_state(cfg, 3), init_full_state(cfg, 3), init_full_state(cfg, 4)
    assert all(torch.equal(a[n], b[n]) for n in a)
    assert not torch.equal(a["model.embed_tokens.weight"], c["model.embed_tokens.weight"])


def test_tiny_preset_loads_offline_with_transformers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    transformers = pytest.importorskip("transformers")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    build_tiny(tmp_path, seed=0)
    tokenizer = transformers.AutoTokenizer.from_pretrained(tmp_path)
    model = transformers.AutoModelForCausalLM.from_pretrained(tmp_path)
    assert (tokenizer.pad_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id) == (0, 1, 2)
    assert len(tokenizer) == 512
    assert model.config.hidden_size == 256 and model.config.num_key_value_heads == 4
    text = "The actor generates answers."
    ids = tokenizer(text).input_ids
    assert max(ids) < 512 and len(ids) < len(text)  # merges were learned
    assert tokenizer.decode(ids) == text
