"""Test-only worker handlers, loaded into worker subprocesses through the
RLHF_WORKER_HANDLERS hook (the tests put this directory on PYTHONPATH)."""

from __future__ import annotations

import time
from typing import Any

from rlhf_worker.agent import Invocation


def echo(inv: Invocation) -> dict[str, Any]:
    inv.progress("echoing", 0.5)
    inv.metrics({"echo_rank": inv.worker.config.rank})
    return {"rank": inv.worker.config.rank, "args": inv.args}


def fail(inv: Invocation) -> dict[str, Any]:
    raise ValueError(f"bad input on rank {inv.worker.config.rank}\nsecond line of detail")


def sleep(inv: Invocation) -> dict[str, Any]:
    time.sleep(float(inv.args.get("seconds", 1.0)))
    return {"slept": True}


def all_reduce(inv: Invocation) -> dict[str, Any]:
    import torch
    import torch.distributed as dist

    value = torch.tensor([float(inv.worker.config.rank + 1)])
    dist.all_reduce(value)
    return {"sum": value.item()}


HANDLERS = {"echo": echo, "fail": fail, "sleep": sleep, "all_reduce": all_reduce}
