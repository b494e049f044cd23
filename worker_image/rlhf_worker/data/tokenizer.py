"""A model directory's tokenizer, loaded with the `tokenizers` library alone.

Loading through transformers' AutoTokenizer imports most of transformers,
which costs every worker process tens of seconds on a small machine; the
`tokenizer.json` that Hugging Face directories ship holds the whole fast
tokenizer (normaliser, model, post-processor adding BOS), so reading it
directly gives the same ids. Directories without one (sentencepiece-only
checkpoints) fall back to AutoTokenizer.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any


def _token_text(value: Any) -> str | None:
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else None


class FastTokenizer:
    """The subset of a Hugging Face tokenizer the workers use: encode, decode, special ids."""

    def __init__(self, model_dir: Path) -> None:
        from tokenizers import Tokenizer

        self.backend = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
        specials: dict[str, Any] = {}
        for name in ("special_tokens_map.json", "tokenizer_config.json"):
            path = model_dir / name
            if path.exists():
                specials.update(json.loads(path.read_text(encoding="utf-8")))
        self.bos_token_id = self._id(specials.get("bos_token"))
        self.eos_token_id = self._id(specials.get("eos_token"))
        pad = self._id(specials.get("pad_token"))
        self.pad_token_id = pad if pad is not None else (self.eos_token_id or 0)

    def _id(self, token: Any) -> int | None:
        text = _token_text(token)
        return None if text is None else self.backend.token_to_id(text)

    def __call__(self, texts: Sequence[str], add_special_tokens: bool = True) -> dict[str, Any]:
        encoded = self.backend.encode_batch(list(texts), add_special_tokens=add_special_tokens)
        return {"input_ids": [e.ids for e in encoded]}

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        return str(self.backend.decode(list(ids), skip_special_tokens=skip_special_tokens))


def load(model_dir: Path) -> Any:
    """The tokenizer of a model directory: fast path, or AutoTokenizer without tokenizer.json."""
    if (model_dir / "tokenizer.json").exists():
        return FastTokenizer(model_dir)
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)
