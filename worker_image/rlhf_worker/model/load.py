"""One call from a model directory to this rank's decoder under a layout."""

from __future__ import annotations

from pathlib import Path

import torch

from rlhf_operator.api.models import ArchitectureConfig
from rlhf_operator.contract.sharding import HeadKind, Layout
from rlhf_worker.model.checkpoint import load_shards
from rlhf_worker.model.decoder import Decoder
from rlhf_worker.parallel.groups import context_for


def load_decoder(
    model_dir: str | Path,
    layout: Layout,
    rank: int,
    head: HeadKind = "lm",
    expected: ArchitectureConfig | None = None,
    dtype: torch.dtype = torch.float32,
) -> Decoder:
    """Read this rank's slices and build its decoder (creates the layout's groups: collective)."""
    config, shards = load_shards(model_dir, layout, rank, head=head, expected=expected, dtype=dtype)
    return Decoder(config, context_for(layout, rank), shards)
