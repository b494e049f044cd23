"""Prompts: read from JSON Lines or Parquet, tokenised, served in deterministic batches.

``read_prompts`` returns the prompt texts of a file; every problem with the
file is a ``DataError`` whose message is one line naming the file (and the line
or row, and the field) and what is wrong. ``tokenize_prompts`` truncates from
the left, keeping the end of a prompt, which is where the response continues.

``PromptStream`` serves batches of ``batch_size`` prompts across epochs; epoch
``e`` visits the prompts in the order of a shuffle seeded with ``seed + e``.
Its position (epoch, offset) is its ``state_dict``, saved in checkpoints, so a
resumed job sees exactly the prompts an uninterrupted run would have seen. The
state also carries a fingerprint of the prompts: resuming over a different
prompt file is an error, not a silent change of data.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from rlhf_operator.api.spec import Data

PromptFormat = Literal["jsonl", "parquet"]
FORMATS_BY_SUFFIX: dict[str, PromptFormat] = {
    ".jsonl": "jsonl",
    ".json": "jsonl",
    ".parquet": "parquet",
}


class DataError(ValueError):
    """A prompt file or tokenizer that cannot be used; the message is one line."""


def _type_name(value: Any) -> str:
    names = {dict: "an object", list: "a list", bool: "a boolean", type(None): "null"}
    if isinstance(value, int | float) and not isinstance(value, bool):
        return "a number"
    return names.get(type(value), type(value).__name__)


def prompt_format(path: Path, declared: PromptFormat | None = None) -> PromptFormat:
    """The declared format, or the one the file name implies."""
    if declared is not None:
        return declared
    fmt = FORMATS_BY_SUFFIX.get(path.suffix.lower())
    if fmt is None:
        raise DataError(
            f"{path}: cannot tell the prompt file's format from its name "
            "(use .jsonl, .json or .parquet, or set data.prompts.format)"
        )
    return fmt


def read_prompts(
    path: str | Path, field: str = "prompt", fmt: PromptFormat | None = None
) -> list[str]:
    """The prompt texts of a JSON Lines or Parquet file, in file order."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such prompt file")
    if path.is_dir():
        raise DataError(f"{path}: is a directory, not a prompt file")
    fmt = prompt_format(path, fmt)
    prompts = _read_parquet(path, field) if fmt == "parquet" else _read_jsonl(path, field)
    if not prompts:
        raise DataError(f"{path}: no prompts (the file is empty)")
    return prompts


def _read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as err:
        raise DataError(f"{path}: cannot read prompt file: {err.strerror or err}") from None


def _prompt_of(record: Any, field: str, where: str) -> str:
    if not isinstance(record, dict):
        raise DataError(f"{where}: expected a JSON object, got {_type_name(record)}")
    if field not in record:
        fields = ", ".join(sorted(record)) or "none"
        raise DataError(f"{where}: no field {field!r} (fields: {fields})")
    value = record[field]
    if not isinstance(value, str):
        raise DataError(f"{where}: field {field!r} is {_type_name(value)}, not a string")
    return value


def _read_jsonl(path: Path, field: str) -> list[str]:
    data = _read_bytes(path)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        bad_line = data[: err.start].count(b"\n") + 1
        raise DataError(f"{path}, line {bad_line}: not UTF-8 text") from None
    # A .json file may also hold one JSON array of records.
    if text.lstrip().startswith("["):
        return _read_json_array(path, text, field)
    prompts = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue  # blank lines (e.g. a trailing newline) are not records
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise DataError(f"{path}, line {number}: invalid JSON: {err.msg}") from None
        prompts.append(_prompt_of(record, field, f"{path}, line {number}"))
    return prompts


def _read_json_array(path: Path, text: str, field: str) -> list[str]:
    try:
        records = json.loads(text)
    except json.JSONDecodeError as err:
        raise DataError(f"{path}, line {err.lineno}: invalid JSON: {err.msg}") from None
    if not isinstance(records, list):
        raise DataError(f"{path}: expected a JSON array of records")
    return [_prompt_of(r, field, f"{path}, record {i + 1}") for i, r in enumerate(records)]


def _read_parquet(path: Path, field: str) -> list[str]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(path)
    except OSError as err:
        raise DataError(f"{path}: cannot read prompt file: {err.strerror or err}") from None
    except pa.ArrowException as err:
        first_line = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise DataError(f"{path}: not a readable Parquet file: {first_line}") from None
    columns = parquet.schema_arrow.names
    if field not in columns:
        raise DataError(f"{path}: no column {field!r} (columns: {', '.join(columns) or 'none'})")
    column_type = parquet.schema_arrow.field(field).type
    if not (pa.types.is_string(column_type) or pa.types.is_large_string(column_type)):
        raise DataError(f"{path}: column {field!r} has type {column_type}, not string")
    try:
        values = parquet.read(columns=[field]).column(field).to_pylist()
    except pa.ArrowException as err:
        raise DataError(f"{path}: not a readable Parquet file: {err}") from None
    for row, value in enumerate(values, start=1):
        if value is None:
            raise DataError(f"{path}, row {row}: field {field!r} is null, not a string")
    return values


# ---------------------------------------------------------------- tokenising


def load_tokenizer(model_dir: str | Path) -> Any:
    """The Hugging Face tokenizer saved in the actor's model directory (offline)."""
    from rlhf_worker.data import tokenizer as tokenizer_module

    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise DataError(f"{model_dir}: no such model directory (looking for the tokenizer)")
    try:
        return tokenizer_module.load(model_dir)
    except Exception as err:  # transformers raises many kinds; all mean "unusable"
        message = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise DataError(f"{model_dir}: cannot load the tokenizer: {message}") from None


def truncate_left(ids: Sequence[int], max_length: int, bos_id: int | None) -> list[int]:
    """The last ``max_length`` ids, keeping a leading BOS token if there was one."""
    ids = list(ids)
    if len(ids) <= max_length:
        return ids
    if bos_id is not None and ids[0] == bos_id and max_length > 1:
        return [bos_id, *ids[len(ids) - max_length + 1 :]]
    return ids[len(ids) - max_length :]


def tokenize_prompts(tokenizer: Any, prompts: Sequence[str], max_length: int) -> list[list[int]]:
    """Token ids of every prompt (with the tokenizer's special tokens), left-truncated."""
    encoded = tokenizer(list(prompts), add_special_tokens=True)["input_ids"]
    bos_id = getattr(tokenizer, "bos_token_id", None)
    return [truncate_left(ids, max_length, bos_id) for ids in encoded]


# ---------------------------------------------------------------- batching


@dataclass(frozen=True)
class Prompt:
    """One prompt: its index in the file, its text and its token ids."""

    index: int
    text: str
    ids: tuple[int, ...]


def load_prompts(data: Data, tokenizer: Any, base_dir: str | Path | None = None) -> list[Prompt]:
    """Read and tokenise the job's prompts; a relative path is resolved against ``base_dir``."""
    path = Path(data.prompts.path)
    if base_dir is not None and not path.is_absolute():
        path = Path(base_dir) / path
    texts = read_prompts(path, data.prompts.field, data.prompts.format)
    ids = tokenize_prompts(tokenizer, texts, data.max_prompt_length)
    return [Prompt(i, t, tuple(x)) for i, (t, x) in enumerate(zip(texts, ids, strict=True))]


def epoch_order(num_prompts: int, seed: int, epoch: int) -> list[int]:
    """The order of epoch ``epoch``: a shuffle seeded with ``seed + epoch``.

    Python's ``random.Random`` gives the same shuffle on every platform and
    version, and is independent of torch's global RNG (which sampling uses).
    """
    order = list(range(num_prompts))
    random.Random(seed + epoch).shuffle(order)
    return order


def fingerprint(texts: Sequence[str]) -> str:
    """A short hash of the prompts and their order in the file."""
    digest = hashlib.sha256()
    for text in texts:
        encoded = text.encode("utf-8")
        digest.update(len(encoded).to_bytes(8, "little"))
        digest.update(encoded)
    return digest.hexdigest()[:16]


@dataclass
class PromptBatch:
    """One iteration's prompts and where in the stream they came from."""

    prompts: list[Prompt]
    epoch: int  # the epoch of the batch's first prompt


class PromptStream:
    """Endless batches of prompts, epoch after epoch, resumable from ``state_dict()``.

    A batch never drops prompts at an epoch's end: it continues into the next
    epoch's order, so every prompt is seen once per epoch.
    """

    def __init__(self, prompts: Sequence[Prompt], batch_size: int, seed: int) -> None:
        if not prompts:
            raise DataError("no prompts to iterate over")
        if batch_size < 1:
            raise DataError(f"batch size must be at least 1, got {batch_size}")
        self.prompts = list(prompts)
        self.batch_size = batch_size
        self.seed = seed
        self.epoch = 0
        self.offset = 0
        self._fingerprint = fingerprint([p.text for p in self.prompts])
        self._order = epoch_order(len(self.prompts), seed, 0)

    def _enter_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self._order = epoch_order(len(self.prompts), self.seed, epoch)

    def next_batch(self) -> PromptBatch:
        first_epoch = self.epoch
        batch: list[Prompt] = []
        while len(batch) < self.batch_size:
            if self.offset == len(self._order):
                self._enter_epoch(self.epoch + 1)
                self.offset = 0
            take = min(self.batch_size - len(batch), len(self._order) - self.offset)
            batch += [self.prompts[i] for i in self._order[self.offset : self.offset + take]]
            self.offset += take
        return PromptBatch(batch, first_epoch)

    def __iter__(self) -> PromptStream:
        return self

    def __next__(self) -> PromptBatch:
        return self.next_batch()

    def state_dict(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "offset": self.offset,
            "seed": self.seed,
            "num_prompts": len(self.prompts),
            "fingerprint": self._fingerprint,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue where the saved stream stopped; refuse different prompts or seed."""
        if state.get("fingerprint") != self._fingerprint or state.get("num_prompts") != len(
            self.prompts
        ):
            raise DataError(
                f"the prompts differ from the checkpoint's ({len(self.prompts)} prompts now, "
                f"{state.get('num_prompts')} then): resuming would not see the same data"
            )
        if state.get("seed") != self.seed:
            raise DataError(
                f"data.shuffleSeed is {self.seed} but the checkpoint used {state.get('seed')}"
            )
        epoch, offset = int(state["epoch"]), int(state["offset"])
        if not 0 <= offset <= len(self.prompts) or epoch < 0:
            raise DataError(f"invalid data position in checkpoint: epoch {epoch}, offset {offset}")
        self._enter_epoch(epoch)
        self.offset = offset
