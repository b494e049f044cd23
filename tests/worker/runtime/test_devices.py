"""Device discipline in the data path, on a machine without a GPU.

Two ways to see a host tensor where a GPU run would have a device one: the data
path's functions run with the runtime's device set to ``meta`` (a tensor made on
the host then meets meta tensors and torch refuses the mix), and `DeviceChecks`,
which refuses the project's tensor factories called without a device. The whole
suite runs its jobs under the latter (tests/conftest.py sets RLHF_DEVICE_CHECKS).
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch

from rlhf_worker.engine import GenerationConfig, generate
from rlhf_worker.engine.generate import left_pad
from rlhf_worker.model.load import load_decoder
from rlhf_worker.rollout.engine import generation_output
from rlhf_worker.runtime import calls, datamove, devices
from rlhf_worker.runtime import generate as runtime_generate
from rlhf_worker.runtime.devices import DeviceChecks, DeviceError
from rlhf_worker.runtime.state import LocalData

META = torch.device("meta")


def test_a_factory_without_a_device_in_the_project_is_refused() -> None:
    with DeviceChecks(), pytest.raises(DeviceError, match=r"torch.tensor\(\) without a device"):
        left_pad([[1, 2]], pad=0, device=None)  # type: ignore[arg-type]
    with DeviceChecks():
        ids, _ = left_pad([[1, 2]], pad=0, device="cpu")  # a host tensor asked for by name
        torch.arange(3)  # the tests' own code (like a library's) is not held to the rule
    assert ids.tolist() == [[1, 2]]


@pytest.mark.parametrize(
    "call",
    [
        "torch.as_tensor([1, 2])",
        "torch.asarray([1, 2])",
        "torch.normal(0.0, 1.0, (2,))",
        "torch.scalar_tensor(1.0)",
        "torch.arange(torch.tensor(3, device='meta'))",  # a tensor argument: still the host's
        "torch.tril_indices(3, 3)",
    ],
)
def test_every_host_factory_is_caught(call: str) -> None:
    # As if the project's own code called it: a frame inside the package.
    code = compile(call, str(Path(devices.PACKAGE) / "probe.py"), "eval")
    with DeviceChecks(), pytest.raises(DeviceError, match="without a device"):
        eval(code, {"torch": torch})
    with DeviceChecks():  # of a tensor, torch.as_tensor keeps its device
        eval(
            compile("torch.as_tensor(torch.zeros(2, device='meta'))", code.co_filename, "eval"),
            {"torch": torch},
        )


def test_an_op_mixing_devices_in_the_project_is_refused() -> None:
    mask = torch.ones(2, 3, dtype=torch.long, device=META)
    with DeviceChecks(), pytest.raises(DeviceError, match="mixes tensors on cpu, meta"):
        runtime_generate.mismatch(torch.zeros(2, 3), torch.zeros(2, 3, device=META), mask)


def test_the_checks_are_on_only_when_asked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(devices.ENV, "0")
    with devices.device_checks():
        left_pad([[1]], pad=0, device=None)  # type: ignore[arg-type]
    monkeypatch.setenv(devices.ENV, "1")
    with devices.device_checks(), pytest.raises(DeviceError):
        left_pad([[1]], pad=0, device=None)  # type: ignore[arg-type]


def _rt(device: torch.device, **extra: Any) -> Any:
    tokenizer = SimpleNamespace(pad_token_id=0, decode=lambda ids, **_: "a" * len(ids))
    return SimpleNamespace(
        device=device, prompt_width=4, response_width=3, tokenizer=tokenizer, **extra
    )


def test_generation_post_processing_stays_on_the_runtime_device() -> None:
    tokens = torch.tensor([[5, 6, 2], [7, 0, 0]], device=META)
    lengths = torch.tensor([3, 1], device=META)
    batch = runtime_generate._sequences(_rt(META), [[1, 2], [3]], tokens, lengths)
    assert {t.device for t in batch.values()} == {META}
    assert batch["input_ids"].shape == batch["attention_mask"].shape == (2, 7)


def test_the_torch_generator_makes_its_tensors_on_the_models_device(tiny_lm_dir: Path) -> None:
    from rlhf_operator.contract.sharding import Layout

    model = load_decoder(tiny_lm_dir, Layout(ranks=(0,)), 0)
    config = GenerationConfig(4, greedy=False, temperature=1.0, top_p=0.9, seed=1)
    with DeviceChecks():
        out = generate(model, [[1, 2, 3], [4]], config, sample_ids=[0, 1])
    assert out.tokens.shape == (2, 4) and out.lengths.tolist() == [4, 4]


def test_vllm_outputs_land_on_the_runtime_device() -> None:
    def completion(ids: list[int]) -> Any:
        entries = [{token: SimpleNamespace(logprob=-0.5)} for token in ids]
        return SimpleNamespace(outputs=[SimpleNamespace(token_ids=ids, logprobs=entries)])

    spec = GenerationConfig(3, pad_token_id=9)
    out = generation_output([completion([4, 5]), completion([6, 7, 8, 1])], spec, META)
    assert {out.tokens.device, out.logprobs.device, out.lengths.device} == {META}
    with DeviceChecks():
        host = generation_output([completion([4, 5]), completion([6, 7, 8, 1])], spec, "cpu")
    assert host.tokens.tolist() == [[4, 5, 9], [6, 7, 8]]
    assert host.lengths.tolist() == [2, 3]
    assert host.logprobs.tolist() == [[-0.5, -0.5, 0.0], [-0.5, -0.5, -0.5]]


def test_reward_scores_and_last_tokens_stay_on_the_runtime_device() -> None:
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]], device=META)
    assert calls._last_index(mask).device == META
    prompts = [SimpleNamespace(text="q")]
    rt = _rt(
        torch.device("cpu"),
        samples_per_prompt=2,
        base_dir=Path("."),
        iteration_prompts=lambda iteration: prompts,
    )
    ids = torch.tensor([[0, 0, 0, 1, 5, 6, 0], [0, 0, 0, 1, 7, 0, 0]])
    attention = (ids > 0).long()
    source = LocalData([(0, 2)], {"input_ids": ids, "attention_mask": attention})
    with DeviceChecks():
        scores = calls._score_with_function(
            rt, 1, "responses", source, "rlhf_worker.rewards:vowel_fraction"
        )
    assert scores.shape == (2,) and scores.device == rt.device


def test_a_data_move_refuses_rows_off_the_runtime_device() -> None:
    rt = _rt(torch.device("cpu"))
    with pytest.raises(DeviceError, match=r"responses\.input_ids: rows on meta"):
        datamove.on_runtime_device(rt, torch.zeros(2, device=META), "responses.input_ids")
    row = torch.zeros(2)
    assert datamove.on_runtime_device(rt, row, "responses.input_ids") is row
