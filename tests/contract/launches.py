"""Worker launch settings for tests: one valid local launch, changed where a test needs."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from rlhf_operator.contract.launch import WorkerSettings

LOCAL = WorkerSettings(
    job_id="job-x",
    coordinator_addr="127.0.0.1:5005",
    world_size=4,
    master_addr="10.0.0.7",
    master_port=29400,
    token="s3cret",
    connect_timeout_s=12.5,
)


def worker_settings(**changes: Any) -> WorkerSettings:
    """``LOCAL`` with some fields changed (checked as any launch is)."""
    return replace(LOCAL, **changes)
