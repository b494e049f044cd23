"""The fast tokenizer path gives the same ids and text as transformers' AutoTokenizer."""

from __future__ import annotations

from pathlib import Path

from rlhf_worker.data.tokenizer import FastTokenizer, load
from rlhf_worker.model.tiny import build_tokenizer


def test_same_ids_special_tokens_and_decoding_as_transformers(tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    build_tokenizer(tmp_path, vocab_size=512)
    fast, reference = FastTokenizer(tmp_path), AutoTokenizer.from_pretrained(str(tmp_path))
    texts = ["the red cat sat on the mat", "blue sky, green sea!", ""]
    assert fast(texts)["input_ids"] == reference(texts)["input_ids"]
    assert (fast.bos_token_id, fast.eos_token_id, fast.pad_token_id) == (
        reference.bos_token_id,
        reference.eos_token_id,
        reference.pad_token_id,
    )
    ids = fast(texts[:1])["input_ids"][0] + [fast.eos_token_id]
    assert fast.decode(ids) == reference.decode(ids, skip_special_tokens=True)
    assert isinstance(load(tmp_path), FastTokenizer)
