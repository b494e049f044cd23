"""Names of the environment variables a worker process reads (see `rlhf_worker.__main__`
for what each means). Written by `rlhf_operator.coordinator.launch.worker_env`, read by
the worker: one list, so the two sides cannot drift apart."""

from __future__ import annotations

JOB_ID = "RLHF_JOB_ID"
COORDINATOR_ADDR = "RLHF_COORDINATOR_ADDR"
TOKEN = "RLHF_TOKEN"
TOKEN_FILE = "RLHF_TOKEN_FILE"
RANK = "RANK"
WORLD_SIZE = "WORLD_SIZE"
LOCAL_RANK = "LOCAL_RANK"
NODE_RANK = "NODE_RANK"
MASTER_ADDR = "MASTER_ADDR"
MASTER_PORT = "MASTER_PORT"
DEVICE = "RLHF_DEVICE"
CONNECT_TIMEOUT = "RLHF_CONNECT_TIMEOUT"
HANDLERS = "RLHF_WORKER_HANDLERS"
LOG_LEVEL = "RLHF_LOG_LEVEL"

DEVICES = ("cpu", "cuda")
