"""Shared fixtures: paths of the repository's parts."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Every job the suite runs (in process or in worker subprocesses, which inherit the
# environment) holds its data path to the runtime's device: see rlhf_worker/runtime/devices.py.
os.environ.setdefault("RLHF_DEVICE_CHECKS", "1")

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return ROOT
