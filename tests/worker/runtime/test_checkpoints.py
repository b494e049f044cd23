"""Training checkpoints: atomic files, commit marker, finding the newest complete one, retention.

The directory, manifest and commit are the contract's (`contract.checkpoints`, torch-free);
the rank files are the worker's (`runtime.rank_files`): these tests run both together.
"""

from __future__ import annotations

import json
import os
import random
import re
from pathlib import Path
from typing import Any

import numpy
import pytest
import torch

from rlhf_operator.contract import checkpoints as ckpt
from rlhf_operator.contract.checkpoints import CheckpointError
from rlhf_worker.runtime import rank_files


def sample_tensors(seed: int) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    weight = torch.randn(4, 6, generator=gen)
    return {
        "layers.0.weight": weight,
        "layers.0.weight.t": weight.t(),  # non-contiguous view sharing storage
        "bf16": torch.randn(3, generator=gen).to(torch.bfloat16),
        "steps": torch.tensor([7, -3], dtype=torch.int64),
        "flags": torch.tensor([True, False]),
        "nan": torch.tensor([float("nan"), float("-inf"), -0.0]),
        "empty": torch.zeros(0, 5),
    }


def save(root: Path, iteration: int, world_size: int = 2, commit: bool = True) -> ckpt.Manifest:
    manifest: ckpt.Manifest = {}
    for rank in range(world_size):
        meta = {"data": {"epoch": 0, "offset": iteration}, "algorithm": {"lagrange": 1.5}}
        manifest |= rank_files.write_rank_files(root, iteration, rank, sample_tensors(rank), meta)
    if commit:
        ckpt.commit(root, iteration, manifest, world_size)
    return manifest


def test_round_trip_is_bit_exact(tmp_path: Path) -> None:
    tensors = sample_tensors(3)
    meta = {"data": {"epoch": 2, "offset": 5}, "rng": rank_files.capture_rng()}
    manifest = rank_files.write_rank_files(tmp_path, 4, 3, tensors, meta)
    assert set(manifest) == {"rank-00003.safetensors", "rank-00003.json"}
    loaded, loaded_meta = rank_files.read_rank_files(ckpt.checkpoint_dir(tmp_path, 4), 3)
    assert set(loaded) == set(tensors)
    for name, tensor in tensors.items():
        got = loaded[name]
        assert got.dtype == tensor.dtype and got.shape == tensor.shape
        # Compare the bytes, so that NaN payloads and -0.0 count too.
        assert got.contiguous().view(torch.uint8).equal(tensor.contiguous().view(torch.uint8))
    assert loaded_meta["data"] == {"epoch": 2, "offset": 5}
    assert loaded_meta["iteration"] == 4 and loaded_meta["rank"] == 3
    assert (tmp_path / "iter-00000004").is_dir()
    # No temporary files are left behind.
    assert sorted(p.name for p in (tmp_path / "iter-00000004").iterdir()) == sorted(manifest)


def test_commit_writes_the_manifest_and_latest_complete_finds_it(tmp_path: Path) -> None:
    assert ckpt.latest_complete(tmp_path / "not-yet") is None
    manifest = save(tmp_path, 10)
    info = ckpt.latest_complete(tmp_path)
    assert info is not None
    assert (info.iteration, info.world_size, info.path) == (10, 2, tmp_path / "iter-00000010")
    assert info.files == manifest
    marker = json.loads((info.path / ckpt.MARKER).read_text())
    assert (
        marker["files"]["rank-00001.json"]["bytes"]
        == (info.path / "rank-00001.json").stat().st_size
    )


def test_a_crash_between_files_leaves_no_marker(tmp_path: Path) -> None:
    save(tmp_path, 1)
    # Iteration 2: rank 0 wrote its files, then the job died before rank 1 and the commit.
    partial = save(tmp_path, 2, world_size=1, commit=False)
    info = ckpt.latest_complete(tmp_path)
    assert info is not None and info.iteration == 1
    # The commit refuses while a rank's report is missing, and writes no marker.
    with pytest.raises(CheckpointError, match=r"not committed: no report of rank-00001\.json"):
        ckpt.commit(tmp_path, 2, partial, world_size=2)
    assert not (tmp_path / "iter-00000002" / ckpt.MARKER).exists()


def test_a_crash_inside_a_file_write_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    save(tmp_path, 1)

    def crash(src: Any, dst: Any) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="No space left"):
        rank_files.write_rank_files(tmp_path, 2, 0, sample_tensors(0), {})
    monkeypatch.undo()
    assert list((tmp_path / "iter-00000002").iterdir()) == []  # no final or temporary file
    info = ckpt.latest_complete(tmp_path)
    assert info is not None and info.iteration == 1


def test_commit_checks_the_files_are_there(tmp_path: Path) -> None:
    manifest = save(tmp_path, 3, commit=False)
    (tmp_path / "iter-00000003" / "rank-00001.safetensors").unlink()
    with pytest.raises(CheckpointError, match=r"not committed: rank-00001\.safetensors is missing"):
        ckpt.commit(tmp_path, 3, manifest, 2)
    manifest = save(tmp_path, 4, commit=False)
    with open(tmp_path / "iter-00000004" / "rank-00000.json", "ab") as f:
        f.write(b" ")
    with pytest.raises(CheckpointError, match=r"rank-00000.json has \d+ bytes, its rank reported"):
        ckpt.commit(tmp_path, 4, manifest, 2)
    assert ckpt.latest_complete(tmp_path) is None


def test_committed_checkpoints_are_never_rewritten(tmp_path: Path) -> None:
    save(tmp_path, 5)
    before = (tmp_path / "iter-00000005" / "rank-00000.safetensors").read_bytes()
    with pytest.raises(CheckpointError, match="already committed"):
        rank_files.write_rank_files(tmp_path, 5, 0, sample_tensors(9), {})
    assert (tmp_path / "iter-00000005" / "rank-00000.safetensors").read_bytes() == before


@pytest.mark.parametrize(
    "damage",
    [
        "truncate",
        "flip",
        "delete",
        "marker-garbage",
        "marker-missing",
        "marker-empty",
        "marker-of-another",
    ],
)
def test_damaged_checkpoints_are_ignored(tmp_path: Path, damage: str) -> None:
    save(tmp_path, 1)
    save(tmp_path, 2)
    newest = tmp_path / "iter-00000002"
    shard = newest / "rank-00001.safetensors"
    if damage == "truncate":
        shard.write_bytes(shard.read_bytes()[:-10])
    elif damage == "flip":
        data = bytearray(shard.read_bytes())
        data[-1] ^= 0xFF
        shard.write_bytes(bytes(data))
    elif damage == "delete":
        shard.unlink()
    elif damage == "marker-garbage":
        (newest / ckpt.MARKER).write_text("{half a json")
    elif damage == "marker-missing":
        (newest / ckpt.MARKER).unlink()
    elif damage == "marker-of-another":
        (newest / ckpt.MARKER).write_bytes((tmp_path / "iter-00000001" / ckpt.MARKER).read_bytes())
    else:
        (newest / ckpt.MARKER).write_text("")
    info = ckpt.latest_complete(tmp_path)
    assert info is not None and info.iteration == 1
    # Without checksums only sizes are checked: a flipped byte then goes unnoticed.
    fast = ckpt.latest_complete(tmp_path, verify_checksums=False)
    assert fast is not None and fast.iteration == (2 if damage == "flip" else 1)


def test_stray_entries_in_the_root_are_ignored(tmp_path: Path) -> None:
    save(tmp_path, 7)
    (tmp_path / "iter-00000009").write_text("a file, not a directory")
    (tmp_path / "iter-12").mkdir()
    (tmp_path / "metrics.jsonl").write_text("{}")
    info = ckpt.latest_complete(tmp_path)
    assert info is not None and info.iteration == 7


def test_unreadable_checkpoint_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("x")
    with pytest.raises(
        CheckpointError, match=f"^{re.escape(str(not_a_dir))}: checkpoint root is not a directory$"
    ):
        ckpt.latest_complete(not_a_dir)

    def denied(path: Any) -> list[str]:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(os, "listdir", denied)
    with pytest.raises(
        CheckpointError,
        match=f"^{re.escape(str(tmp_path))}: cannot read checkpoint root: Permission denied$",
    ):
        ckpt.latest_complete(tmp_path)
    with pytest.raises(CheckpointError, match="cannot create checkpoint directory"):
        rank_files.write_rank_files(not_a_dir / "sub", 1, 0, {}, {})


def test_reading_a_missing_or_corrupt_rank(tmp_path: Path) -> None:
    save(tmp_path, 1)
    directory = tmp_path / "iter-00000001"
    with pytest.raises(CheckpointError, match="no files of rank 5"):
        rank_files.read_rank_files(directory, 5)
    (directory / "rank-00000.safetensors").write_bytes(b"\x00" * 4)
    with pytest.raises(CheckpointError, match="rank 0's files are corrupt") as info:
        rank_files.read_rank_files(directory, 0)
    assert "\n" not in str(info.value)


def iterations(root: Path) -> list[int]:
    return [i for i, _ in ckpt.iteration_dirs(root)]


def test_retention_keeps_the_newest_complete_ones(tmp_path: Path) -> None:
    for i in (1, 2, 3, 4):
        save(tmp_path, i)
    save(tmp_path, 5, commit=False)  # a save in progress
    deleted = ckpt.retain(tmp_path, keep=2)
    assert [p.name for p in deleted] == ["iter-00000001", "iter-00000002"]
    assert iterations(tmp_path) == [3, 4, 5]
    info = ckpt.latest_complete(tmp_path)
    assert info is not None and info.iteration == 4


def test_retention_drops_old_leftovers_but_never_the_only_complete_one(tmp_path: Path) -> None:
    save(tmp_path, 1, commit=False)  # an interrupted save, older than a complete one
    save(tmp_path, 2)
    save(tmp_path, 3, commit=False)
    save(tmp_path, 4, commit=False)
    assert [p.name for p in ckpt.retain(tmp_path, keep=1)] == ["iter-00000001"]
    assert iterations(tmp_path) == [2, 3, 4]
    assert ckpt.retain(tmp_path, keep=0) == []  # keep is at least 1
    # With no complete checkpoint at all, nothing is deleted.
    other = tmp_path / "other"
    save(other, 1, commit=False)
    assert ckpt.retain(other, keep=1) == [] and iterations(other) == [1]


def test_retention_does_not_count_a_corrupt_checkpoint(tmp_path: Path) -> None:
    save(tmp_path, 1)
    save(tmp_path, 2)
    shard = tmp_path / "iter-00000002" / "rank-00000.safetensors"
    data = bytearray(shard.read_bytes())
    data[-1] ^= 0x01
    shard.write_bytes(bytes(data))
    assert ckpt.retain(tmp_path, keep=1) == []
    info = ckpt.latest_complete(tmp_path)
    assert info is not None and info.iteration == 1


def test_rng_state_round_trip() -> None:
    state = json.loads(json.dumps(rank_files.capture_rng()))  # as it goes through the JSON file
    expected = (random.random(), torch.rand(3), numpy.random.rand(2))
    random.random(), torch.rand(5), numpy.random.rand(4)  # move everything on
    rank_files.restore_rng(state)
    got = (random.random(), torch.rand(3), numpy.random.rand(2))
    assert got[0] == expected[0]
    assert torch.equal(got[1], expected[1])
    assert numpy.array_equal(got[2], expected[2])


def test_optimizer_and_model_state_resume_bit_exactly(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 1))
    opt = torch.optim.AdamW(model.parameters(), lr=0.01, betas=(0.9, 0.95))
    data = torch.randn(8, 3)

    def step(m: torch.nn.Module, o: torch.optim.Optimizer) -> None:
        o.zero_grad()
        m(data).pow(2).mean().backward()
        o.step()

    for _ in range(3):
        step(model, opt)
    model_tensors, model_skeleton = rank_files.split_tensors(model.state_dict(), "model")
    opt_tensors, opt_skeleton = rank_files.split_tensors(opt.state_dict(), "optimizer")
    meta = {"model": model_skeleton, "optimizer": opt_skeleton}
    manifest = rank_files.write_rank_files(tmp_path, 3, 0, model_tensors | opt_tensors, meta)
    ckpt.commit(tmp_path, 3, manifest, world_size=1)

    info = ckpt.latest_complete(tmp_path)
    assert info is not None
    tensors, loaded_meta = rank_files.read_rank_files(info.path, 0)
    torch.manual_seed(1)
    resumed = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 1))
    resumed_opt = torch.optim.AdamW(resumed.parameters(), lr=0.5)
    resumed.load_state_dict(rank_files.join_tensors(loaded_meta["model"], tensors))
    resumed_opt.load_state_dict(rank_files.join_tensors(loaded_meta["optimizer"], tensors))
    assert resumed_opt.param_groups[0]["betas"] == (0.9, 0.95)  # tuples stay tuples
    for _ in range(2):
        step(model, opt)
        step(resumed, resumed_opt)
    for a, b in zip(model.parameters(), resumed.parameters(), strict=True):
        assert torch.equal(a, b)


def test_split_tensors_round_trip_and_errors() -> None:
    tree = {"a": [1, 2.5, None, "x", (torch.ones(2), True)], 3: {"b": torch.zeros(1)}}
    tensors, skeleton = rank_files.split_tensors(tree, "s")
    assert sorted(tensors) == ["s/3.b", "s/a.4.0"]
    back = rank_files.join_tensors(json.loads(json.dumps(skeleton)), tensors)
    assert back.keys() == tree.keys() and back["a"][:4] == [1, 2.5, None, "x"]
    assert isinstance(back["a"][4], tuple) and torch.equal(back[3]["b"], torch.zeros(1))
    with pytest.raises(CheckpointError, match="cannot save s/x: a set"):
        rank_files.split_tensors({"x": {1, 2}}, "s")
    with pytest.raises(CheckpointError, match=r"checkpoint has no tensor 's/a\.4\.0'"):
        rank_files.join_tensors(skeleton, {})
