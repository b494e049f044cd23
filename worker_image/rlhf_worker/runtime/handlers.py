"""The main job's command handlers: thin wrappers from typed commands to the runtime.

The agent dispatches each command by name to one of these; `python -m
rlhf_worker` includes this table. Each handler returns a small JSON object
(metrics, byte counts, manifest entries); bulk data never goes back.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

from rlhf_operator.contract.plan import call_layout, home_layouts
from rlhf_operator.controlplane import messages as m
from rlhf_worker.agent import Handler, Invocation
from rlhf_worker.runtime import calls, datamove, models, offload, persist
from rlhf_worker.runtime.devices import device_checks
from rlhf_worker.runtime.memory import hand_back_cached, measure_peak
from rlhf_worker.runtime.state import Runtime, create_layout_groups, job_calls, seed_everything

RUNTIME_KEY = "runtime"
C = TypeVar("C")


def _runtime(inv: Invocation) -> Runtime:
    rt = inv.worker.state.get(RUNTIME_KEY)
    if rt is None:
        raise RuntimeError("the job is not prepared on this worker (prepare was not run)")
    return rt


def _command(inv: Invocation, kind: type[C]) -> C:
    """The invocation's command, which the handler table guarantees is of `kind`."""
    if not isinstance(inv.command, kind):
        raise TypeError(f"expected a {kind.__name__} command, got {type(inv.command).__name__}")
    return inv.command


def prepare(inv: Invocation) -> dict[str, Any]:
    """Take the job and the plan, build or find the models, create every layout's groups."""
    import torch
    import torch.distributed as dist

    from rlhf_worker.data.prompts import load_prompts, load_tokenizer

    cmd = _command(inv, m.Prepare)
    job, plan = cmd.job, cmd.plan
    # The worker's own launch environment says which device it has (RLHF_DEVICE).
    cfg = inv.worker.config
    device = torch.device("cuda", cfg.local_rank) if cfg.device == "cuda" else torch.device("cpu")
    job_call_list = job_calls(job)
    layouts = {c.name: call_layout(plan.call(c.name), plan.gpus_per_node) for c in job_call_list}
    homes = home_layouts(plan, job_call_list)
    rt = Runtime(
        rank=dist.get_rank(),
        world_size=dist.get_world_size(),
        device=device,
        job=job,
        plan=plan,
        base_dir=Path(cmd.base_dir),
        output_dir=Path(cmd.output_dir),
        calls={c.name: c for c in job_call_list},
        layouts=layouts,
        homes=homes,
        model_dirs={},
    )
    seed_everything(int(job.spec.training.seed) + rt.rank)
    create_layout_groups(list(dict.fromkeys([*layouts.values(), *homes.values()])))
    models.ensure_model_dirs(rt)
    rt.tokenizer = load_tokenizer(rt.model_dirs["actor"])
    rt.prompts = load_prompts(job.spec.data, rt.tokenizer, base_dir=rt.base_dir)
    inv.worker.state[RUNTIME_KEY] = rt
    return {"prompts": len(rt.prompts)}


def load_role(inv: Invocation) -> dict[str, Any]:
    cmd, rt = _command(inv, m.LoadRole), _runtime(inv)
    models.load_role(rt, cmd.role, cmd.layout)
    if cmd.role in offload.offloaded_roles(rt):  # kept in host memory between its calls
        offload.offload_role(rt, cmd.role)
    return {}


def reallocate(inv: Invocation) -> dict[str, Any]:
    cmd = _command(inv, m.Reallocate)
    with device_checks():
        return models.reallocate_role(_runtime(inv), cmd.role, cmd.src, cmd.dst)


def release(inv: Invocation) -> dict[str, Any]:
    cmd = _command(inv, m.Release)
    rt = _runtime(inv)
    models.release_role(rt, cmd.role, cmd.layout)
    hand_back_cached(rt.device)
    return {}


def offload_role(inv: Invocation) -> dict[str, Any]:
    rt = _runtime(inv)
    result = offload.offload_role(rt, _command(inv, m.OffloadRole).role)
    hand_back_cached(rt.device)
    return result


def restore_role(inv: Invocation) -> dict[str, Any]:
    return offload.restore_role(_runtime(inv), _command(inv, m.RestoreRole).role)


def move_data(inv: Invocation) -> dict[str, Any]:
    cmd = _command(inv, m.MoveData)
    with device_checks():
        received = datamove.move_data(_runtime(inv), cmd.key, cmd.src_call, cmd.dst_call)
    return {"bytes_received": received}


def run_call(inv: Invocation) -> dict[str, Any]:
    cmd = _command(inv, m.RunCall)
    rt = _runtime(inv)
    if rt.rank not in rt.layouts[cmd.name].ranks:
        return calls.run_call(rt, cmd.name, int(cmd.iteration))  # nothing to run or measure
    with measure_peak(rt.device) as memory, device_checks():
        metrics: dict[str, Any] = calls.run_call(rt, cmd.name, int(cmd.iteration))
    hand_back_cached(rt.device)
    metrics["peak_bytes"] = memory.peak  # every tensor this rank held during the call
    return metrics


def end_iteration(inv: Invocation) -> dict[str, Any]:
    _command(inv, m.EndIteration)
    _runtime(inv).data.clear()
    return {}


def save_checkpoint(inv: Invocation) -> dict[str, Any]:
    cmd = _command(inv, m.SaveCheckpoint)
    return {"files": persist.save(_runtime(inv), Path(cmd.path), int(cmd.iteration))}


def restore_checkpoint(inv: Invocation) -> dict[str, Any]:
    cmd = _command(inv, m.RestoreCheckpoint)
    persist.restore(_runtime(inv), Path(cmd.path), int(cmd.iteration))
    return {}


def export(inv: Invocation) -> dict[str, Any]:
    cmd = _command(inv, m.Export)
    return {"written": persist.export(_runtime(inv), cmd.role, Path(cmd.path))}


def shutdown(inv: Invocation) -> dict[str, Any]:
    """Close any vLLM engines (and their worker processes) before the agent's own shutdown."""
    from rlhf_worker.agent import shutdown as leave_process_group
    from rlhf_worker.runtime.generate import shutdown_engines

    shutdown_engines()
    return leave_process_group(inv)


# Keyed by each command's NAME (which the coordinator's command says), so the two cannot drift.
HANDLERS: dict[str, Handler] = {
    m.Shutdown.NAME: shutdown,
    m.Prepare.NAME: prepare,
    m.LoadRole.NAME: load_role,
    m.Reallocate.NAME: reallocate,
    m.Release.NAME: release,
    m.OffloadRole.NAME: offload_role,
    m.RestoreRole.NAME: restore_role,
    m.MoveData.NAME: move_data,
    m.RunCall.NAME: run_call,
    m.EndIteration.NAME: end_iteration,
    m.SaveCheckpoint.NAME: save_checkpoint,
    m.RestoreCheckpoint.NAME: restore_checkpoint,
    m.Export.NAME: export,
}
