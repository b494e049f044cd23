"""One rank's files of a training checkpoint: its tensors and its JSON metadata.

The torch half of checkpoints; the directory layout, the manifest, committing and
finding complete checkpoints are the contract's (``rlhf_operator.contract.checkpoints``),
which the coordinator shares. Each rank calls ``write_rank_files`` and reports the
manifest entries it returns; ``read_rank_files`` reads them back on a restore.
Nested states (an algorithm's, an optimizer's) are split into tensors and a JSON
skeleton (``split_tensors`` / ``join_tensors``), RNG states into JSON.
"""

from __future__ import annotations

import base64
import json
import random
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save
from torch import Tensor

from rlhf_operator.contract.checkpoints import (
    MARKER,
    CheckpointError,
    Manifest,
    make_checkpoint_dir,
    meta_file,
    tensor_file,
    write_atomic,
)


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
    root = Path(root)
    directory = make_checkpoint_dir(root, iteration)
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


def read_rank_files(directory: str | Path, rank: int) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """One rank's tensors and metadata from a checkpoint directory."""
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
    return torch.frombuffer(bytearray(base64.b64decode(text)), dtype=torch.uint8).clone()


def restore_rng(state: Mapping[str, Any]) -> None:
    """Restore what ``capture_rng`` captured."""
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
