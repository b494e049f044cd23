"""Moving an iteration's data between the layouts of the call that made it and the
call that needs it: worker to worker, with point-to-point sends, never through
the coordinator.

Every data key has a fixed shape known from the job alone (prompts are padded
to maxPromptLength, responses to maxNewTokens), so a receiver allocates its
rows without asking anybody; `plan_rows` (pure) says who sends which rows.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from rlhf_operator.api.dataflow import SEQUENCE_KEYS
from rlhf_worker.runtime.devices import DeviceError
from rlhf_worker.runtime.rows import plan_rows, rank_segments
from rlhf_worker.runtime.state import LocalData, Runtime


def key_rows(rt: Runtime, key: str) -> int:
    """Rows of a key per iteration: one per sample, or one per prompt for greedy rollouts."""
    if key.startswith("greedy_"):
        return int(rt.spec.data.batch_size)
    return rt.rows


def key_tensors(rt: Runtime, key: str) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    """The tensors one row of a key holds: name -> (shape without the row dim, dtype)."""
    width = rt.prompt_width + rt.response_width
    if key in ("responses", "greedy_responses"):
        return {"input_ids": ((width,), torch.long), "attention_mask": ((width,), torch.long)}
    if key in SEQUENCE_KEYS:
        return {"value": ((), torch.float32)}
    if key == "values" and rt.spec.algorithm.name == "safe-rlhf":
        return {"value": ((rt.response_width, 2), torch.float32)}
    return {"value": ((rt.response_width,), torch.float32)}


def chunks_of(rt: Runtime, call: str) -> int:
    """Minibatches a call splits the rows into (train calls), else 1."""
    return int(rt.spec.training.minibatches) if rt.calls[call].kind == "train" else 1


def replicated_for(rt: Runtime, key: str, call: str) -> bool:
    """Whether every rank of `call` holds all rows of `key`.

    Sequence-level keys always; and everything a train call consumes, because
    advantages are computed over the whole batch (group statistics, whitening,
    reward normalisation), identically on every rank.
    """
    return key in SEQUENCE_KEYS or rt.calls[call].kind == "train"


def on_runtime_device(rt: Runtime, tensor: torch.Tensor, what: str) -> torch.Tensor:
    """`tensor`, refused if it is not on the runtime's device: NCCL sends only device memory,
    and a host tensor here means a call left its output on the host."""
    if tensor.device != rt.device:
        raise DeviceError(
            f"{what}: rows on {tensor.device} where this rank's data lives on {rt.device}"
        )
    return tensor


def move_data(rt: Runtime, key: str, src_call: str, dst_call: str) -> int:
    """Run this rank's part of moving `key` from `src_call`'s ranks to `dst_call`'s.

    Returns the bytes this rank received from other ranks.
    """
    src, dst = rt.layouts[src_call], rt.layouts[dst_call]
    rows = key_rows(rt, key)
    node_of = {r: rt.node_of(r) for r in {*src.ranks, *dst.ranks}}
    transfers = plan_rows(
        src,
        dst,
        rows,
        node_of,
        src_chunks=chunks_of(rt, src_call),
        dst_chunks=chunks_of(rt, dst_call),
        dst_replicated=replicated_for(rt, key, dst_call),
    )
    have = rt.data.get((key, src_call))
    shapes = key_tensors(rt, key)
    out: LocalData | None = None
    if rt.rank in dst.ranks:
        segments = rank_segments(
            dst, rt.rank, rows, chunks_of(rt, dst_call), replicated_for(rt, key, dst_call)
        )
        total = sum(b - a for a, b in segments)
        out = LocalData(
            segments,
            {
                name: torch.empty((total, *shape), dtype=dtype, device=rt.device)
                for name, (shape, dtype) in shapes.items()
            },
        )
    ops: list[dist.P2POp] = []
    received = 0
    for t in transfers:
        count = t.rows[1] - t.rows[0]
        if t.src == rt.rank and t.dst == rt.rank:
            assert have is not None and out is not None
            for name, tensor in have.rows(*t.rows).items():
                tensor = on_runtime_device(rt, tensor, f"{key}.{name}")
                out.tensors[name][t.dst_offset : t.dst_offset + count].copy_(tensor)
        elif t.src == rt.rank:
            assert have is not None, f"rank {rt.rank} was asked to send {key} it does not hold"
            # Messages between two ranks match in posting order: both sides walk
            # the key's tensors in key_tensors' order.
            rows_held = have.rows(*t.rows)
            for name in shapes:
                tensor = on_runtime_device(rt, rows_held[name], f"{key}.{name}")
                ops.append(dist.P2POp(dist.isend, tensor.contiguous(), t.dst))
        elif t.dst == rt.rank:
            assert out is not None
            for name in shapes:
                view = out.tensors[name][t.dst_offset : t.dst_offset + count]
                ops.append(dist.P2POp(dist.irecv, view, t.src))
                received += view.numel() * view.element_size()
    if ops:
        for work in dist.batch_isend_irecv(ops):
            work.wait()
    if out is not None:
        rt.data[(key, dst_call)] = out
    return received
