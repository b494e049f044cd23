"""Training checkpoints: per-rank shard files plus a commit marker written last.

Layout under the job's checkpoint root::

    iter-00000020/
        rank-00000.safetensors   tensors of rank 0 (model shards, optimizer state)
        rank-00000.json          small JSON: RNG states, data position, algorithm state, ...
        rank-00001.safetensors
        ...
        COMMITTED                the manifest: iteration, every file with size and sha256

Every file is written atomically: to a temporary name in the same directory,
flushed, fsynced, renamed over the final name, then the directory is fsynced.
Each rank calls ``write_rank_files`` and reports the returned manifest entries;
one process (rank 0 or the coordinator) merges them and calls ``commit``, which
checks that every file is there with its size before writing ``COMMITTED``. A
checkpoint without the marker, or whose files do not match its manifest, is
not complete: ``latest_complete`` skips it, so a job killed at any moment
resumes from the newest complete one.

Only ``write_rank_files``, ``read_rank_files`` and the RNG helpers need torch,
and they import it themselves: committing, finding and pruning checkpoints
work in a process without torch.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import random
import re
import shutil
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from torch import Tensor

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


def _make_dir(root: Path, iteration: int) -> Path:
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


def write_rank_files(
    root: str | Path,
    iteration: int,
    rank: int,
    tensors: Mapping[str, Tensor],
    meta: Mapping[str, Any],
) -> Manifest:
    """Write one rank's tensors and JSON metadata; return the manifest entries to report.

    Tensors are saved bit-exactly (any dtype; non-contiguous ones are copied
    first). ``meta`` must be JSON-serialisable (see ``capture_rng``).
    Refuses to write into a checkpoint that is already committed.
    """
    from safetensors.torch import save

    root = Path(root)
    directory = _make_dir(root, iteration)
    if (directory / MARKER).exists():
        raise CheckpointError(f"{directory}: already committed; a checkpoint is never rewritten")
    try:
        meta_bytes = json.dumps(
            {"iteration": iteration, "rank": rank, **meta}, sort_keys=True
        ).encode()
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"rank {rank}: checkpoint metadata is not JSON: {err}") from None
    # safetensors refuses tensors sharing storage or non-contiguous views: give it copies.
    plain = {name: t.detach().contiguous().clone() for name, t in tensors.items()}
    manifest = {tensor_file(rank): write_atomic(directory / tensor_file(rank), save(plain))}
    manifest[meta_file(rank)] = write_atomic(directory / meta_file(rank), meta_bytes)
    return manifest


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


# ---------------------------------------------------------------- reading


def read_rank_files(directory: str | Path, rank: int) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """One rank's tensors and metadata from a checkpoint directory."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    directory = Path(directory)
    try:
        tensors = load_file(str(directory / tensor_file(rank)))
        meta = json.loads((directory / meta_file(rank)).read_bytes())
    except FileNotFoundError as err:
        raise CheckpointError(f"{directory}: no files of rank {rank} ({err.filename})") from None
    except OSError as err:
        raise CheckpointError(
            f"{directory}: cannot read rank {rank}'s files: {err.strerror or err}"
        ) from None
    except (SafetensorError, ValueError) as err:
        message = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise CheckpointError(f"{directory}: rank {rank}'s files are corrupt: {message}") from None
    return tensors, meta


# ---------------------------------------------------------------- nested state


def split_tensors(tree: Any, prefix: str) -> tuple[dict[str, Tensor], Any]:
    """Separate the tensors of a nested state from its JSON-able structure.

    ``tree`` is made of dicts (any str/int/float/bool/None keys: an optimizer's
    state is keyed by int), lists, tuples, numbers, strings, None and tensors, as
    in ``optimizer.state_dict()``. Tensors are named ``prefix/path`` for the
    safetensors file; the structure goes into the JSON file. ``join_tensors``
    puts them back together exactly (int keys stay ints, tuples stay tuples).
    """
    import torch

    tensors: dict[str, Tensor] = {}

    def walk(obj: Any, path: str) -> Any:
        if isinstance(obj, torch.Tensor):
            name = f"{prefix}/{path}" if path else prefix
            tensors[name] = obj
            return {"__tensor__": name}
        if isinstance(obj, dict):
            items = []
            for key, value in obj.items():
                if not (key is None or isinstance(key, str | int | float)):
                    raise CheckpointError(f"cannot save {prefix}{path}: a {type(key).__name__} key")
                items.append([key, walk(value, f"{path}.{key}" if path else str(key))])
            return {"__dict__": items}
        if isinstance(obj, tuple):
            return {"__tuple__": [walk(v, f"{path}.{i}") for i, v in enumerate(obj)]}
        if isinstance(obj, list):
            return [walk(v, f"{path}.{i}") for i, v in enumerate(obj)]
        if obj is None or isinstance(obj, str | int | float):
            return obj
        raise CheckpointError(f"cannot save {prefix}/{path}: a {type(obj).__name__}")

    return tensors, walk(tree, "")


def join_tensors(skeleton: Any, tensors: Mapping[str, Tensor]) -> Any:
    """The nested state ``split_tensors`` took apart."""
    if isinstance(skeleton, list):
        return [join_tensors(v, tensors) for v in skeleton]
    if isinstance(skeleton, dict):
        if "__tensor__" in skeleton:
            name = skeleton["__tensor__"]
            if name not in tensors:
                raise CheckpointError(f"checkpoint has no tensor {name!r}")
            return tensors[name]
        if "__tuple__" in skeleton:
            return tuple(join_tensors(v, tensors) for v in skeleton["__tuple__"])
        return {key: join_tensors(value, tensors) for key, value in skeleton["__dict__"]}
    return skeleton


# ---------------------------------------------------------------- RNG state


def capture_rng() -> dict[str, Any]:
    """Python's, torch's (CPU and CUDA) and numpy's global RNG states, as JSON."""
    import torch

    version, internal, gauss = random.getstate()
    state: dict[str, Any] = {
        "python": [version, list(internal), gauss],
        "torch": base64.b64encode(torch.get_rng_state().numpy().tobytes()).decode(),
    }
    if torch.cuda.is_available():
        state["torch_cuda"] = [
            base64.b64encode(s.numpy().tobytes()).decode() for s in torch.cuda.get_rng_state_all()
        ]
    numpy = sys.modules.get("numpy")  # only if something in the process uses it
    if numpy is not None:
        name, keys, pos, has_gauss, cached = numpy.random.get_state()
        state["numpy"] = [name, keys.tolist(), int(pos), int(has_gauss), float(cached)]
    return state


def _bytes_tensor(text: str) -> Any:
    import torch

    return torch.frombuffer(bytearray(base64.b64decode(text)), dtype=torch.uint8).clone()


def restore_rng(state: Mapping[str, Any]) -> None:
    """Restore what ``capture_rng`` captured."""
    import torch

    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    torch.set_rng_state(_bytes_tensor(state["torch"]))
    if "torch_cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([_bytes_tensor(s) for s in state["torch_cuda"]])
    if "numpy" in state:
        import numpy

        name, keys, pos, has_gauss, cached = state["numpy"]
        numpy.random.set_state(
            (name, numpy.array(keys, dtype=numpy.uint32), pos, has_gauss, cached)
        )
