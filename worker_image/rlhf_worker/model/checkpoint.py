"""Load and save the Hugging Face format: config.json plus safetensors, names 1:1.

``load_shards`` reads only the regions a rank holds under a layout
(``safe_open`` + ``get_slice``), so no rank materialises the full model unless
its layout puts the whole model on it. Every problem with the directory is a
``CheckpointError`` whose message is one line naming the file and what is wrong.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from pydantic import ValidationError
from pydantic.alias_generators import to_snake
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor

from rlhf_operator.api.models import ArchitectureConfig
from rlhf_operator.contract.sharding import HeadKind, Layout, ModelShape, Region, rank_shards
from rlhf_worker.model.config import ModelConfig, architecture_mismatch
from rlhf_worker.model.storage import in_storage_order

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
SCORE_INIT_SEED = 0


class CheckpointError(ValueError):
    """A model directory that is missing, unreadable or not the planned architecture."""


def read_config(model_dir: str | Path) -> dict[str, Any]:
    path = Path(model_dir) / "config.json"
    if not path.is_file():
        raise CheckpointError(
            f"{path}: no such file (is {model_dir} a Hugging Face model directory?)"
        )
    try:
        cfg = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise CheckpointError(f"{path}: not readable JSON ({err})") from None
    if not isinstance(cfg, dict):
        raise CheckpointError(f"{path}: expected a JSON object")
    if cfg.get("model_type", "llama") not in ("llama", "qwen2"):
        raise CheckpointError(
            f"{path}: model_type {cfg.get('model_type')!r} is not supported (llama, qwen2)"
        )
    return cfg


def read_architecture(model_dir: str | Path) -> ArchitectureConfig:
    """The architecture a model directory's config.json describes."""
    cfg = read_config(model_dir)
    try:
        return ArchitectureConfig.from_hf_config(cfg)
    except ValidationError as err:  # named as config.json names it (snake_case)
        first = err.errors()[0]
        where = ".".join(to_snake(str(part)) for part in first["loc"])
        raise CheckpointError(
            f"{Path(model_dir) / 'config.json'}: {where}: {first['msg']}"
        ) from None


def tensor_files(model_dir: str | Path) -> dict[str, Path]:
    """Which safetensors file holds each tensor name."""
    root = Path(model_dir)
    index = root / INDEX_FILE
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise CheckpointError(f"{index}: not a safetensors index ({err})") from None
        return {name: root / file for name, file in weight_map.items()}
    single = root / SINGLE_FILE
    if not single.is_file():
        raise CheckpointError(f"{single}: no such file (and no {INDEX_FILE})")
    try:
        with safe_open(str(single), framework="pt") as f:
            return dict.fromkeys(f.keys(), single)
    except Exception as err:
        raise CheckpointError(f"{single}: not a safetensors file ({err})") from None


def load_shards(
    model_dir: str | Path,
    layout: Layout,
    rank: int,
    head: HeadKind = "lm",
    expected: ArchitectureConfig | None = None,
    dtype: torch.dtype = torch.float32,
    num_values: int = 1,
) -> tuple[ModelConfig, dict[str, Tensor]]:
    """This rank's shards of a checkpoint under a layout, and the model's config.

    ``expected``: the planned architecture; a mismatch is a CheckpointError.
    A ``value`` head missing from the checkpoint (a critic started from a causal
    LM) is initialised deterministically.
    """
    arch = read_architecture(model_dir)
    if expected is not None:
        problem = architecture_mismatch(arch, expected)
        if problem:
            raise CheckpointError(f"{Path(model_dir) / 'config.json'}: {problem}")
    # num_values: e.g. Safe-RLHF's critic predicts reward and cost values.
    config = ModelConfig.of(arch, head, num_values)
    files = tensor_files(model_dir)
    specs = {p.name: p for p in config.shape.params()}
    regions = rank_shards(config.shape, layout, rank)
    by_file: dict[Path, list[str]] = {}
    out: dict[str, Tensor] = {}
    for name in regions:
        if name in files:
            by_file.setdefault(files[name], []).append(name)
        elif name == "score.weight":
            out[name] = _initial_score(specs[name].shape, regions[name], dtype)
        else:
            raise CheckpointError(
                f"{Path(model_dir)}: tensor {name} is missing from the checkpoint"
            )
    for path, names in by_file.items():
        if not path.is_file():
            raise CheckpointError(f"{path}: no such file (listed in {INDEX_FILE})")
        try:
            with safe_open(str(path), framework="pt") as f:
                for name in names:
                    piece = f.get_slice(name)
                    shape = tuple(piece.get_shape())
                    if (
                        name == "score.weight"
                        and shape != specs[name].shape
                        and shape[1:] == specs[name].shape[1:]
                    ):
                        # A value head of another width (a one-output reward model
                        # starting a two-output critic) is initialised, as a missing one.
                        out[name] = _initial_score(specs[name].shape, regions[name], dtype)
                        continue
                    if shape != specs[name].shape:
                        raise CheckpointError(
                            f"{path}: {name} has shape {list(shape)}, "
                            f"expected {list(specs[name].shape)}"
                        )
                    index = tuple(slice(start, stop) for start, stop in regions[name])
                    shard = in_storage_order(piece[index].to(dtype), specs[name].column_major)
                    # A slice can be a view of the whole tensor as read from the file
                    # (rows of a tensor-parallel split, with no cast to copy it): a rank
                    # must not keep the other ranks' rows alive behind its shard.
                    if shard.untyped_storage().nbytes() > shard.numel() * shard.element_size():
                        shard = shard.clone(memory_format=torch.preserve_format)
                    out[name] = shard
        except CheckpointError:
            raise
        except Exception as err:
            raise CheckpointError(f"{path}: cannot read ({err})") from None
    return config, out


def _initial_score(shape: tuple[int, ...], region: Region, dtype: torch.dtype) -> Tensor:
    # Same values on every rank and every run: the score head is replicated.
    gen = torch.Generator().manual_seed(SCORE_INIT_SEED)
    full = torch.randn(shape, generator=gen) * (shape[-1] ** -0.5)
    index = tuple(slice(start, stop) for start, stop in region)
    return full[index].to(dtype).contiguous()


def save_pretrained(
    model_dir: str | Path,
    hf_config: Mapping[str, Any],
    state: Mapping[str, Tensor],
    head: HeadKind = "lm",
) -> Path:
    """Write config.json and model.safetensors from a full (unsharded) state dict."""
    root = Path(model_dir)
    root.mkdir(parents=True, exist_ok=True)
    cfg = dict(hf_config)
    shape = ModelShape.from_hf_config(cfg, head=head)
    if head == "value":
        base = {"llama": "Llama", "qwen2": "Qwen2"}[str(cfg.get("model_type", "llama"))]
        cfg["architectures"] = [f"{base}ForSequenceClassification"]
        cfg["num_labels"] = 1
    tensors: dict[str, Tensor] = {}
    for spec in shape.params():
        if spec.name not in state:
            raise ValueError(f"state has no {spec.name}")
        tensor = state[spec.name].detach()
        if tuple(tensor.shape) != spec.shape:
            raise ValueError(f"{spec.name}: shape {tuple(tensor.shape)}, expected {spec.shape}")
        tensors[spec.name] = tensor.contiguous().clone()
    (root / "config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
    save_file(tensors, str(root / SINGLE_FILE), metadata={"format": "pt"})
    return root
