"""Run a function on N real gloo processes from a test.

    results = run_distributed(fn, world_size, *args, timeout=120)

``fn(rank, world_size, *args)`` runs in each of ``world_size`` spawned processes
after ``torch.distributed`` is initialised (gloo, loopback, one thread); its
return value comes back in ``results[rank]`` (returned through a file, so
tensors are fine). ``fn`` must be a module-level function so that spawn can
pickle it. An exception in any rank fails the caller with that rank's
traceback; a hang past ``timeout`` seconds kills every rank and raises
``TimeoutError``.
"""

from __future__ import annotations

import os
import socket
import tempfile
import time
import traceback
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _entry(
    rank: int,
    fn: Callable[..., Any],
    world_size: int,
    port: int,
    out_dir: str,
    timeout: float,
    args: tuple[Any, ...],
) -> None:
    os.environ["GLOO_SOCKET_IFNAME"] = "lo"
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo",
        init_method=f"tcp://127.0.0.1:{port}",
        rank=rank,
        world_size=world_size,
        timeout=timedelta(seconds=timeout),
    )
    try:
        try:
            result = fn(rank, world_size, *args)
        except BaseException:
            # Written before this rank exits, so before any peer can fail because of
            # the exit ("connection closed"): the parent reports this one, not those.
            (Path(out_dir) / f"rank{rank}.error").write_text(traceback.format_exc())
            raise
        torch.save(result, Path(out_dir) / f"rank{rank}.pt")
        # Nobody leaves while a peer may still talk to it.
        dist.barrier()
    finally:
        dist.destroy_process_group()


def run_distributed(
    fn: Callable[..., Any], world_size: int, *args: Any, timeout: float = 120.0
) -> list[Any]:
    """Run ``fn(rank, world_size, *args)`` on ``world_size`` gloo processes; return each rank's result."""
    with tempfile.TemporaryDirectory(prefix="rlhf-dist-") as out_dir:
        context = mp.start_processes(
            _entry,
            args=(fn, world_size, free_port(), out_dir, timeout, args),
            nprocs=world_size,
            join=False,
            start_method="spawn",
        )
        deadline = time.monotonic() + timeout
        # join() raises as soon as any rank fails and terminates the others; that rank
        # may be a peer that merely lost its connection to the one whose fn raised.
        try:
            while not context.join(timeout=0.5):
                if time.monotonic() > deadline:
                    for process in context.processes:
                        if process.is_alive():
                            process.kill()
                    raise TimeoutError(f"distributed run of {fn.__name__} exceeded {timeout} s")
        except (mp.ProcessRaisedException, mp.ProcessExitedException) as failure:
            errors = sorted(Path(out_dir).glob("rank*.error"))
            if errors:
                raise RuntimeError(
                    f"{errors[0].stem} failed in {fn.__name__}:\n{errors[0].read_text()}"
                ) from failure
            raise
        return [
            torch.load(Path(out_dir) / f"rank{rank}.pt", weights_only=False)
            for rank in range(world_size)
        ]
