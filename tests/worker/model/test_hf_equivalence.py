"""Our decoder equals transformers' Llama / Qwen2 on the same weights (float32, CPU)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from rlhf_worker.engine import OptimizerConfig, Trainer, forward_logprobs, forward_values
from rlhf_worker.model import Decoder, load_shards
from rlhf_worker.model.decoder import keys_are_prefixes
from rlhf_worker.model.tiny import build_tiny_model, tiny_hf_config
from rlhf_worker.parallel.groups import single_process_context
from tests.worker.grads import captured_grads

transformers = pytest.importorskip("transformers")


def small_config(model_type: str, tied: bool) -> dict[str, Any]:
    cfg = tiny_hf_config()
    cfg.update(
        model_type=model_type,
        architectures=["Qwen2ForCausalLM" if model_type == "qwen2" else "LlamaForCausalLM"],
        tie_word_embeddings=tied,
        rope_theta=50000.0,
        num_hidden_layers=2,
    )
    return cfg


def padded_batch(side: str = "left") -> dict[str, torch.Tensor]:
    """Left padding (prompts) needs the attention mask; right padding alone (responses of
    equal prompts) runs causal attention without one, on SDPA's mask-free kernels."""
    gen = torch.Generator().manual_seed(3)
    ids = torch.randint(3, 512, (3, 10), generator=gen)
    mask = torch.ones_like(ids)
    pads = {1: 4, 2: 1}
    for row, count in pads.items():
        cols = slice(None, count) if side == "left" else slice(10 - count, None)
        ids[row, cols], mask[row, cols] = 0, 0
    return {"input_ids": ids, "attention_mask": mask}


def ours(model_dir: Path, head: str = "lm") -> Decoder:
    ctx = single_process_context()
    config, shards = load_shards(model_dir, ctx.layout, ctx.rank, head=head)
    return Decoder(config, ctx, shards)


def hf_positions(mask: torch.Tensor) -> torch.Tensor:
    return (mask.cumsum(-1) - 1).clamp(min=0)


@pytest.mark.parametrize("side", ["left", "right"])
@pytest.mark.parametrize(
    ("model_type", "tied"), [("llama", False), ("qwen2", False), ("qwen2", True)]
)
def test_logprobs_and_gradients_equal_transformers(
    tmp_path: Path, model_type: str, tied: bool, side: str
) -> None:
    cfg = small_config(model_type, tied)
    build_tiny_model(tmp_path, cfg, seed=5)
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32)
    assert type(hf).__name__ == cfg["architectures"][0]
    batch = padded_batch(side)
    ids, mask = batch["input_ids"], batch["attention_mask"]
    valid = (mask[:, 1:] * mask[:, :-1]).bool()

    logits = hf(ids, attention_mask=mask, position_ids=hf_positions(mask)).logits
    ref = torch.log_softmax(logits[:, :-1], -1).gather(-1, ids[:, 1:, None]).squeeze(-1)
    (-(ref * valid).sum()).backward()

    model = ours(tmp_path)
    got = forward_logprobs(model, batch)
    torch.testing.assert_close(got[valid], ref.detach()[valid], atol=1e-5, rtol=1e-5)

    # Gradients of the same loss, through our training step (no clipping, lr 0).
    trainer = Trainer(model, OptimizerConfig(lr=0.0, max_grad_norm=0.0))
    grads = captured_grads(trainer)
    trainer.step(
        batch,
        lambda lp, mb: -(lp * (mb["attention_mask"][:, 1:] * mb["attention_mask"][:, :-1])).sum(),
        micro_batches=2,
    )
    hf_params = dict(hf.named_parameters())
    for name in model.local_state():
        expected = hf_params[name].grad
        assert expected is not None
        torch.testing.assert_close(grads[name], expected.flatten(), atol=1e-5, rtol=1e-4)


def test_value_head_equals_sequence_classification(tmp_path: Path) -> None:
    cfg = small_config("llama", False)
    build_tiny_model(tmp_path, cfg, seed=6, head="value")
    hf = transformers.AutoModelForSequenceClassification.from_pretrained(
        tmp_path, dtype=torch.float32
    )
    batch = padded_batch()
    ids, mask = batch["input_ids"], batch["attention_mask"]
    with torch.no_grad():
        hidden = hf.model(ids, attention_mask=mask, position_ids=hf_positions(mask))
        ref = hf.score(hidden.last_hidden_state).squeeze(-1)
    got = forward_values(ours(tmp_path, head="value"), batch)
    torch.testing.assert_close(got[mask.bool()], ref[mask.bool()], atol=1e-5, rtol=1e-5)


def test_only_left_padding_needs_an_attention_mask() -> None:
    assert keys_are_prefixes(padded_batch("right")["attention_mask"])
    assert not keys_are_prefixes(padded_batch("left")["attention_mask"])
