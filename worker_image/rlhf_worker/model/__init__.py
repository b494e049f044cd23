"""The Llama/Qwen2 decoder, sharded per layout, and its Hugging Face checkpoints."""

from rlhf_worker.model.checkpoint import CheckpointError, load_shards, read_config, save_pretrained
from rlhf_worker.model.config import ModelConfig
from rlhf_worker.model.decoder import Decoder, KVCache, positions_from_mask
from rlhf_worker.model.load import load_decoder

__all__ = [
    "CheckpointError",
    "Decoder",
    "KVCache",
    "ModelConfig",
    "load_decoder",
    "load_shards",
    "positions_from_mask",
    "read_config",
    "save_pretrained",
]
