"""Prompt files, tokenising and the resumable prompt stream."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from rlhf_operator.api.spec import Data, PromptSource
from rlhf_worker.data.prompts import (
    DataError,
    Prompt,
    PromptStream,
    epoch_order,
    load_prompts,
    load_tokenizer,
    read_prompts,
    tokenize_prompts,
    truncate_left,
)

SENTENCES = [
    "the quick brown fox jumps over the lazy dog",
    "a small model learns to answer short questions",
    "what is two plus two? two plus two is four.",
]


def write_jsonl(path: Path, records: list[object]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


# ---------------------------------------------------------------- reading


def test_reads_jsonl_and_json_lines_skipping_blank_lines(tmp_path: Path) -> None:
    path = tmp_path / "p.jsonl"
    path.write_text('{"prompt": "a", "x": 1}\n\n{"prompt": "b"}\n')
    assert read_prompts(path) == ["a", "b"]
    other = write_jsonl(tmp_path / "p.json", [{"q": "x"}, {"q": "y"}])
    assert read_prompts(other, field="q") == ["x", "y"]


def test_reads_a_json_array(tmp_path: Path) -> None:
    path = tmp_path / "p.json"
    path.write_text(json.dumps([{"prompt": "a"}, {"prompt": "b"}]))
    assert read_prompts(path) == ["a", "b"]
    path.write_text(json.dumps([{"prompt": "a"}, {"prompt": 3}]))
    with pytest.raises(DataError, match=r"p.json, record 2: field 'prompt' is a number"):
        read_prompts(path)


def test_reads_parquet(tmp_path: Path) -> None:
    path = tmp_path / "p.parquet"
    pq.write_table(pa.table({"text": ["a", "b", "c"], "n": [1, 2, 3]}), path)
    assert read_prompts(path, field="text") == ["a", "b", "c"]
    with pytest.raises(DataError, match=r"p.parquet: no column 'prompt' \(columns: text, n\)$"):
        read_prompts(path)
    with pytest.raises(DataError, match=r"p.parquet: column 'n' has type int64, not string$"):
        read_prompts(path, field="n")
    pq.write_table(pa.table({"prompt": ["a", None]}), path)
    with pytest.raises(DataError, match=r"p.parquet, row 2: field 'prompt' is null"):
        read_prompts(path)


def one_line_error(path: Path, **kwargs: object) -> str:
    with pytest.raises(DataError) as info:
        read_prompts(path, **kwargs)  # type: ignore[arg-type]
    message = str(info.value)
    assert "\n" not in message and str(path) in message
    return message


def test_errors_name_the_file_line_and_field(tmp_path: Path) -> None:
    assert one_line_error(tmp_path / "none.jsonl").endswith("no such prompt file")
    assert one_line_error(tmp_path).endswith("is a directory, not a prompt file")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "ok"}\n{"prompt": "x",}\n')
    assert "bad.jsonl, line 2: invalid JSON" in one_line_error(bad)
    bad.write_text('{"prompt": "ok"}\n{"text": "x", "id": 1}\n')
    assert one_line_error(bad).endswith("line 2: no field 'prompt' (fields: id, text)")
    bad.write_text('{"prompt": ["x"]}\n')
    assert one_line_error(bad).endswith("line 1: field 'prompt' is a list, not a string")
    bad.write_text('{"prompt": null}\n')
    assert one_line_error(bad).endswith("line 1: field 'prompt' is null, not a string")
    bad.write_text('"just a string"\n')
    assert one_line_error(bad).endswith("line 1: expected a JSON object, got str")
    bad.write_bytes(b'{"prompt": "a"}\n{"prompt": "\xff"}\n')
    assert one_line_error(bad).endswith("line 2: not UTF-8 text")
    bad.write_text("")
    assert one_line_error(bad).endswith("no prompts (the file is empty)")
    bad.write_text("\n\n")
    assert one_line_error(bad).endswith("no prompts (the file is empty)")
    garbage = tmp_path / "garbage.parquet"
    garbage.write_bytes(b"not parquet at all")
    assert "not a readable Parquet file" in one_line_error(garbage)
    unknown = tmp_path / "prompts.txt"
    unknown.write_text("x")
    assert "cannot tell the prompt file's format" in one_line_error(unknown)


def test_unreadable_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "a"}])

    def denied(self: Path) -> bytes:
        raise PermissionError(13, "Permission denied")

    # chmod would not stop root (the CI user), so the read itself is made to fail.
    monkeypatch.setattr(Path, "read_bytes", denied)
    assert one_line_error(path).endswith("cannot read prompt file: Permission denied")


def test_declared_format_overrides_the_name(tmp_path: Path) -> None:
    path = tmp_path / "prompts.txt"
    path.write_text('{"prompt": "a"}\n')
    assert read_prompts(path, fmt="jsonl") == ["a"]


# ---------------------------------------------------------------- tokenising


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=["<pad>", "<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(SENTENCES, trainer=trainer)
    # Prepend BOS, as Llama's tokenizer does, so left truncation must keep it.
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>"
    )
    root = tmp_path_factory.mktemp("tokenizer")
    fast.save_pretrained(str(root))
    return root


def test_truncate_left_keeps_the_end_and_the_bos() -> None:
    assert truncate_left([1, 5, 6, 7, 8], 3, bos_id=1) == [1, 7, 8]
    assert truncate_left([5, 6, 7, 8], 3, bos_id=1) == [6, 7, 8]
    assert truncate_left([5, 6], 3, bos_id=None) == [5, 6]
    assert truncate_left([1, 5, 6], 1, bos_id=1) == [6]


def test_tokenises_with_the_model_directory_tokenizer(tokenizer_dir: Path) -> None:
    tokenizer = load_tokenizer(tokenizer_dir)
    ids = tokenize_prompts(tokenizer, SENTENCES[:2], max_length=1000)
    assert all(row[0] == tokenizer.bos_token_id for row in ids)
    assert tokenizer.decode(ids[0], skip_special_tokens=True) == SENTENCES[0]
    short = tokenize_prompts(tokenizer, SENTENCES[:2], max_length=4)
    assert [len(row) for row in short] == [4, 4]
    assert short[0][0] == tokenizer.bos_token_id and short[0][1:] == ids[0][-3:]
    assert tokenizer.decode(short[0][1:]).endswith("dog")


def test_tokenizer_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no such model directory"):
        load_tokenizer(tmp_path / "missing")
    (tmp_path / "tokenizer_config.json").write_text("{not json")
    with pytest.raises(DataError, match=f"{tmp_path}: cannot load the tokenizer") as info:
        load_tokenizer(tmp_path)
    assert "\n" not in str(info.value)


def test_load_prompts_resolves_relative_paths(tmp_path: Path, tokenizer_dir: Path) -> None:
    write_jsonl(tmp_path / "p.jsonl", [{"text": s} for s in SENTENCES])
    data = Data(prompts=PromptSource(path="p.jsonl", field="text"), max_prompt_length=5)
    prompts = load_prompts(data, load_tokenizer(tokenizer_dir), base_dir=tmp_path)
    assert [p.text for p in prompts] == SENTENCES
    assert [p.index for p in prompts] == [0, 1, 2]
    assert all(len(p.ids) == 5 for p in prompts)


# ---------------------------------------------------------------- the stream


def make_prompts(n: int) -> list[Prompt]:
    return [Prompt(i, f"prompt {i}", (i,)) for i in range(n)]


def test_epoch_order_is_deterministic_and_differs_between_epochs() -> None:
    assert epoch_order(10, seed=3, epoch=0) == epoch_order(10, seed=3, epoch=0)
    assert epoch_order(10, seed=3, epoch=1) == epoch_order(10, seed=4, epoch=0)
    assert epoch_order(10, seed=3, epoch=0) != epoch_order(10, seed=3, epoch=1)
    assert sorted(epoch_order(10, seed=3, epoch=5)) == list(range(10))


def test_stream_covers_every_prompt_once_per_epoch_across_batch_boundaries() -> None:
    stream = PromptStream(make_prompts(5), batch_size=2, seed=7)
    seen = [p.index for _ in range(5) for p in stream.next_batch().prompts]
    assert seen[:5] == epoch_order(5, 7, 0) and seen[5:] == epoch_order(5, 7, 1)
    assert stream.state_dict()["epoch"] == 1 and stream.state_dict()["offset"] == 5
    # A batch larger than the data spans several epochs.
    big = PromptStream(make_prompts(2), batch_size=5, seed=0)
    batch = big.next_batch()
    assert len(batch.prompts) == 5 and batch.epoch == 0 and big.epoch == 2


@pytest.mark.parametrize("stop_after", [0, 1, 2, 3, 7])
def test_resumed_stream_sees_exactly_what_an_uninterrupted_one_sees(stop_after: int) -> None:
    prompts = make_prompts(7)
    straight = PromptStream(prompts, batch_size=3, seed=11)
    expected = [[p.index for p in straight.next_batch().prompts] for _ in range(10)]
    first = PromptStream(prompts, batch_size=3, seed=11)
    got = [[p.index for p in first.next_batch().prompts] for _ in range(stop_after)]
    saved = json.loads(json.dumps(first.state_dict()))  # as it goes through a checkpoint
    resumed = PromptStream(prompts, batch_size=3, seed=11)
    resumed.load_state_dict(saved)
    got += [[p.index for p in next(resumed).prompts] for _ in range(10 - stop_after)]
    assert got == expected


def test_resume_refuses_different_prompts_or_seed() -> None:
    state = PromptStream(make_prompts(4), batch_size=2, seed=1).state_dict()
    changed = [Prompt(i, f"other {i}", (i,)) for i in range(4)]
    with pytest.raises(DataError, match="the prompts differ from the checkpoint's"):
        PromptStream(changed, batch_size=2, seed=1).load_state_dict(state)
    with pytest.raises(DataError, match="shuffleSeed is 2 but the checkpoint used 1"):
        PromptStream(make_prompts(4), batch_size=2, seed=2).load_state_dict(state)
    with pytest.raises(DataError, match="invalid data position"):
        PromptStream(make_prompts(4), batch_size=2, seed=1).load_state_dict({**state, "offset": 9})
    with pytest.raises(DataError, match="no prompts"):
        PromptStream([], batch_size=2, seed=1)
