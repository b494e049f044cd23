"""Fixtures for the worker's tests: tiny models built locally (never downloaded)."""

from __future__ import annotations

from pathlib import Path

import pytest

from rlhf_worker.model.tiny import build_tiny_model, tiny_hf_config

TINY_SEED = 1234


@pytest.fixture(scope="session")
def tiny_lm_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The ``tiny`` preset as a causal LM (config.json + model.safetensors)."""
    return build_tiny_model(tmp_path_factory.mktemp("tiny-lm"), tiny_hf_config(), seed=TINY_SEED)


@pytest.fixture(scope="session")
def tiny_value_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The ``tiny`` preset with a scalar value head (critic / reward)."""
    return build_tiny_model(
        tmp_path_factory.mktemp("tiny-value"), tiny_hf_config(), seed=TINY_SEED + 1, head="value"
    )
