"""Tiny models and tokenizers built locally, for CPU runs and tests. No downloads.

``build_tiny_model(dir, hf_config, seed)`` writes a random-initialised model in
the Hugging Face format (same seed, same weights); ``build_tokenizer(dir)``
trains a small byte-level BPE tokenizer with ``tokenizers`` on a built-in text
and saves it so ``transformers.AutoTokenizer.from_pretrained(dir)`` loads it
offline. ``build_tiny(dir)`` does both for the ``tiny`` preset.

Tests and benchmarks take their models from here too: the preset
(``tiny_hf_config()``), or one of the named variants below
(``tiny_hf_config(**SMALL)``, ``tiny_shape(**SMALL)``), so that a test and a
benchmark of the same path run the same model.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from rlhf_operator.api.models import PRESETS, ArchitectureConfig
from rlhf_operator.contract.sharding import HeadKind, ModelShape
from rlhf_worker.model.checkpoint import save_pretrained

PAD, BOS, EOS = "<pad>", "<s>", "</s>"
SPECIAL_TOKENS = (PAD, BOS, EOS)  # ids 0, 1, 2
INIT_STD = 0.02

# A little English for the tokenizer to learn merges from.
CORPUS = """
The quick brown fox jumps over the lazy dog. A model learns from feedback.
Reinforcement learning from human feedback trains a policy with a reward model.
The actor generates answers, the critic estimates values, the reference model
keeps the policy close to where it started. Parameters move between layouts.
Once upon a time there was a small language model that wanted to be helpful,
honest and harmless. It read questions and wrote short, clear answers.
What is two plus two? Two plus two is four. What colour is the sky? Blue.
Numbers: 0 1 2 3 4 5 6 7 8 9 10 11 12 100 1000. Punctuation: , . ; : ! ? ( ) " '
""".strip()


# Variants of the preset (changes to its config.json) that tests and benchmarks share.
SMALL: dict[str, Any] = {
    "hidden_size": 32,
    "intermediate_size": 48,
    "num_hidden_layers": 3,
    "head_dim": 4,
    "vocab_size": 40,
}
"""A few KB of weights with the preset's grouped-query attention (8 query heads over 4
key/value heads, so tp 1, 2 and 4 shard it): layout, reallocation and residency tests."""
VLLM: dict[str, Any] = {
    "intermediate_size": 512,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 64,
    "max_position_embeddings": 512,
}
"""What vLLM's CPU build runs: head_dim 64 (its CPU attention wants at least 64) and 4
query heads over 2 key/value heads (tp 2 splits them)."""


def tiny_architecture(**changes: Any) -> ArchitectureConfig:
    """The ``tiny`` preset's architecture with some fields changed (checked like a manifest's)."""
    return ArchitectureConfig.model_validate({**dict(PRESETS["tiny"]), **changes})


def tiny_hf_config(**changes: Any) -> dict[str, Any]:
    """The ``tiny`` preset's config.json (with ``changes``), and the tokenizer's special token ids."""
    cfg = dict(tiny_architecture(**changes).to_hf_config())
    cfg.update(pad_token_id=0, bos_token_id=1, eos_token_id=2, torch_dtype="float32")
    return cfg


def tiny_shape(head: HeadKind = "lm", **changes: Any) -> ModelShape:
    """The shape of the ``tiny`` preset (with ``changes``) under an lm or a value head."""
    return ModelShape.from_architecture(tiny_architecture(**changes), head)


def init_full_state(
    hf_config: Mapping[str, Any], seed: int, head: HeadKind = "lm"
) -> dict[str, Tensor]:
    """Random full weights: normal(0, 0.02) matrices, ones for norms, zeros for biases."""
    gen = torch.Generator().manual_seed(seed)
    state: dict[str, Tensor] = {}
    for spec in ModelShape.from_hf_config(hf_config, head=head).params():
        if spec.name.endswith("norm.weight"):
            state[spec.name] = torch.ones(spec.shape)
        elif spec.name.endswith(".bias"):
            # Small non-zero biases so that a Qwen2 bias bug cannot hide.
            state[spec.name] = torch.randn(spec.shape, generator=gen) * INIT_STD
        else:
            state[spec.name] = torch.randn(spec.shape, generator=gen) * INIT_STD
    return state


def build_tiny_model(
    model_dir: str | Path, hf_config: Mapping[str, Any], seed: int = 0, head: HeadKind = "lm"
) -> Path:
    """Write a random-initialised model (config.json + model.safetensors) to ``model_dir``."""
    return save_pretrained(model_dir, hf_config, init_full_state(hf_config, seed, head), head)


def build_tokenizer(model_dir: str | Path, vocab_size: int = 512) -> Path:
    """Train a byte-level BPE tokenizer locally and save it in the Hugging Face format."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(CORPUS.splitlines(), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, bos_token=BOS, eos_token=EOS, pad_token=PAD
    )
    fast.padding_side = "left"  # prompts are left-padded for generation
    root = Path(model_dir)
    root.mkdir(parents=True, exist_ok=True)
    fast.save_pretrained(str(root))
    return root


def build_tiny(model_dir: str | Path, seed: int = 0, head: HeadKind = "lm") -> Path:
    """The ``tiny`` preset with its tokenizer, ready for ``from_pretrained(model_dir)``."""
    cfg = tiny_hf_config()
    build_tiny_model(model_dir, cfg, seed=seed, head=head)
    return build_tokenizer(model_dir, vocab_size=int(cfg["vocab_size"]))


def main(argv: list[str] | None = None) -> int:
    """``python -m rlhf_worker.model.tiny DIR [--seed N] [--value]``: write the tiny preset to DIR."""
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m rlhf_worker.model.tiny", description=main.__doc__
    )
    parser.add_argument("model_dir", type=Path)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--value", action="store_true", help="a scalar value head (critic, reward)")
    args = parser.parse_args(argv)
    build_tiny(args.model_dir, seed=args.seed, head="value" if args.value else "lm")
    print(args.model_dir)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
