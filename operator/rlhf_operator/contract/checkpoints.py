"""Training checkpoints on disk: the directory layout, the manifest and the commit marker.

The pure half (no torch), shared by the coordinator, which commits, finds and
prunes checkpoints, and the workers, which write their rank files into them
(``rlhf_worker.runtime.rank_files``). Layout under the job's checkpoint root::

    iter-00000020/
        rank-00000.safetensors   tensors of rank 0 (model shards, optimizer state)
        rank-00000.json          small JSON: RNG states, data position, algorithm state, ...
        rank-00001.safetensors
        ...
        COMMITTED                the manifest: iteration, every file with size and sha256

Every file is written atomically (``write_atomic``): to a temporary name in the
same directory, flushed, fsynced, renamed over the final name, then the
directory is fsynced. Each rank writes its files and reports their manifest
entries; one process (the coordinator) merges them and calls ``commit``, which
checks that every file is there with its size before writing ``COMMITTED``. A
checkpoint without the marker, or whose files do not match its manifest, is not
complete: ``latest_complete`` skips it, so a job killed at any moment resumes
from the newest complete one.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MARKER = "COMMITTED"
FORMAT_VERSION = 1
_ITER_RE = re.compile(r"^iter-(\d{8})$")
_CHUNK = 1 << 20

FileEntry = dict[str, Any]  # {"bytes": int, "sha256": str}
Manifest = dict[str, FileEntry]  # file name -> entry


class CheckpointError(ValueError):
    """A checkpoint root or checkpoint that cannot be used; the message is one line."""


def checkpoint_dir(root: str | Path, iteration: int) -> Path:
    return Path(root) / f"iter-{iteration:08d}"


def tensor_file(rank: int) -> str:
    return f"rank-{rank:05d}.safetensors"


def meta_file(rank: int) -> str:
    return f"rank-{rank:05d}.json"


# ---------------------------------------------------------------- atomic files


def fsync_dir(path: Path) -> None:
    """Make a rename or a new entry in ``path`` durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, data: bytes) -> FileEntry:
    """Write ``data`` to ``path`` so that ``path`` is either absent, old, or complete."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    fsync_dir(path.parent)
    return {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def file_entry(path: Path) -> FileEntry:
    """Size and sha256 of a file as it is on disk."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return {"bytes": path.stat().st_size, "sha256": digest.hexdigest()}


# ---------------------------------------------------------------- writing


def make_checkpoint_dir(root: Path, iteration: int) -> Path:
    try:
        root.mkdir(parents=True, exist_ok=True)
        directory = checkpoint_dir(root, iteration)
        directory.mkdir(exist_ok=True)
    except OSError as err:
        raise CheckpointError(
            f"{root}: cannot create checkpoint directory: {err.strerror or err}"
        ) from None
    fsync_dir(root)
    return directory


def commit(
    root: str | Path, iteration: int, manifest: Mapping[str, FileEntry], world_size: int
) -> Path:
    """Write the commit marker after checking every expected file is there, with its size.

    ``manifest`` is the union of all ranks' ``write_rank_files`` results; it must
    name the files of ranks 0..world_size-1.
    """
    directory = checkpoint_dir(root, iteration)
    expected = {f(r) for r in range(world_size) for f in (tensor_file, meta_file)}
    missing_from_manifest = sorted(expected - set(manifest))
    if missing_from_manifest:
        raise CheckpointError(
            f"{directory}: not committed: no report of {', '.join(missing_from_manifest)}"
        )
    for name, entry in sorted(manifest.items()):
        path = directory / name
        if not path.is_file():
            raise CheckpointError(f"{directory}: not committed: {name} is missing")
        if path.stat().st_size != entry["bytes"]:
            raise CheckpointError(
                f"{directory}: not committed: {name} has {path.stat().st_size} bytes, "
                f"its rank reported {entry['bytes']}"
            )
    marker = {
        "format": FORMAT_VERSION,
        "iteration": iteration,
        "world_size": world_size,
        "files": {name: dict(entry) for name, entry in sorted(manifest.items())},
    }
    write_atomic(directory / MARKER, json.dumps(marker, indent=1, sort_keys=True).encode())
    return directory


# ---------------------------------------------------------------- finding


@dataclass(frozen=True)
class CheckpointInfo:
    """A complete checkpoint: where it is, its iteration and its manifest."""

    path: Path
    iteration: int
    world_size: int
    files: Manifest


def iteration_dirs(root: str | Path) -> list[tuple[int, Path]]:
    """``(iteration, path)`` of every ``iter-N`` directory, oldest first.

    A root that does not exist yet has none (a fresh job); a root that is not
    a readable directory is an error.
    """
    root = Path(root)
    if not root.exists():
        return []
    if not root.is_dir():
        raise CheckpointError(f"{root}: checkpoint root is not a directory")
    try:
        names = os.listdir(root)
    except OSError as err:
        raise CheckpointError(
            f"{root}: cannot read checkpoint root: {err.strerror or err}"
        ) from None
    found = []
    for name in names:
        match = _ITER_RE.match(name)
        if match and (root / name).is_dir():
            found.append((int(match.group(1)), root / name))
    return sorted(found)


def check_complete(directory: Path, verify_checksums: bool = True) -> CheckpointInfo | None:
    """The checkpoint's manifest if it is complete and its files match it, else None."""
    try:
        marker = json.loads((directory / MARKER).read_bytes())
        files: Manifest = marker["files"]
        iteration, world_size = int(marker["iteration"]), int(marker["world_size"])
        if directory.name != checkpoint_dir(directory.parent, iteration).name:
            return None  # a marker copied from another checkpoint
        for name, entry in files.items():
            path = directory / name
            if path.stat().st_size != entry["bytes"]:
                return None
            if verify_checksums and file_entry(path)["sha256"] != entry["sha256"]:
                return None
    except (OSError, ValueError, KeyError, TypeError):
        # No marker, an unreadable or half-written one, or a file gone: incomplete.
        return None
    return CheckpointInfo(directory, iteration, world_size, files)


def latest_complete(root: str | Path, verify_checksums: bool = True) -> CheckpointInfo | None:
    """The newest complete checkpoint under ``root``, or None if there is none.

    ``verify_checksums`` re-reads every file to compare its sha256 with the
    manifest (catches corruption, costs one read of the checkpoint); without it
    only presence and sizes are checked.
    """
    for _, directory in reversed(iteration_dirs(root)):
        info = check_complete(directory, verify_checksums)
        if info is not None:
            return info
    return None


def retain(root: str | Path, keep: int, verify_checksums: bool = True) -> list[Path]:
    """Delete all but the newest ``keep`` complete checkpoints; return what was deleted.

    Incomplete directories older than the newest kept checkpoint are leftovers
    of interrupted saves and go too; anything newer than the newest complete
    checkpoint may be a save in progress and is never touched. At least one
    complete checkpoint always stays; ``verify_checksums`` (as in
    ``latest_complete``) keeps a corrupt newest one from counting as that one.
    """
    dirs = iteration_dirs(root)
    complete = [(i, d) for i, d in dirs if check_complete(d, verify_checksums) is not None]
    if not complete:
        return []
    kept = {i for i, _ in complete[-max(keep, 1) :]}
    newest_complete = complete[-1][0]
    deleted = []
    for iteration, directory in dirs:
        if iteration in kept or iteration > newest_complete:
            continue
        # Remove the marker first: a crash mid-delete must not leave a
        # "complete" checkpoint with files missing.
        (directory / MARKER).unlink(missing_ok=True)
        shutil.rmtree(directory, ignore_errors=True)
        deleted.append(directory)
    if deleted:
        fsync_dir(Path(root))
    return deleted
