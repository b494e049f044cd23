"""The main job's command handlers: thin wrappers from commands to the runtime.

The agent dispatches each command by name to one of these; `python -m
rlhf_worker` includes this table. Each handler returns a small JSON object
(metrics, byte counts, manifest entries); bulk data never goes back.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rlhf_operator.api.job import RLHFJob
from rlhf_operator.controlplane import messages as m
from rlhf_operator.coordinator.schedule import call_layout, home_layouts
from rlhf_operator.planner.plan import Plan
from rlhf_worker.agent import Handler, Invocation
from rlhf_worker.runtime import calls, datamove, models, offload, persist
from rlhf_worker.runtime.state import Runtime, create_layout_groups, job_calls, seed_everything
from rlhf_worker.sharding import Layout

RUNTIME_KEY = "runtime"


def _runtime(inv: Invocation) -> Runtime:
    rt = inv.worker.state.get(RUNTIME_KEY)
    if rt is None:
        raise RuntimeError("the job is not prepared on this worker (prepare was not run)")
    return rt


def _layout(msg: m.Layout | dict[str, Any]) -> Layout:
    if isinstance(msg, dict):
        return Layout(tuple(msg["ranks"]), msg.get("pp", 1), msg.get("dp", 1), msg.get("tp", 1))
    return Layout(tuple(msg.ranks), msg.pp, msg.dp, msg.tp)


def prepare(inv: Invocation) -> dict[str, Any]:
    """Take the job and the plan, build or find the models, create every layout's groups."""
    import torch
    import torch.distributed as dist

    from rlhf_worker.data import load_prompts, load_tokenizer

    args = inv.args
    job = RLHFJob.model_validate(args["job"])
    plan = Plan.from_dict(args["plan"])
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
        base_dir=Path(args["base_dir"]),
        output_dir=Path(args["output_dir"]),
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
    cmd = inv.command
    assert isinstance(cmd, m.LoadRole)
    rt = _runtime(inv)
    models.load_role(rt, cmd.role, _layout(cmd.layout))
    if cmd.role in offload.offloaded_roles(rt):  # kept in host memory between its calls
        offload.offload_role(rt, cmd.role)
    return {}


def reallocate(inv: Invocation) -> dict[str, Any]:
    cmd = inv.command
    assert isinstance(cmd, m.Reallocate)
    return models.reallocate_role(_runtime(inv), cmd.role, _layout(cmd.src), _layout(cmd.dst))


def release(inv: Invocation) -> dict[str, Any]:
    models.release_role(_runtime(inv), inv.args["role"], _layout(inv.args["layout"]))
    return {}


def offload_role(inv: Invocation) -> dict[str, Any]:
    return offload.offload_role(_runtime(inv), inv.args["role"])


def restore_role(inv: Invocation) -> dict[str, Any]:
    return offload.restore_role(_runtime(inv), inv.args["role"])


def move_data(inv: Invocation) -> dict[str, Any]:
    a = inv.args
    received = datamove.move_data(_runtime(inv), a["key"], a["src_call"], a["dst_call"])
    return {"bytes_received": received}


def run_call(inv: Invocation) -> dict[str, Any]:
    cmd = inv.command
    assert isinstance(cmd, m.RunCall)
    return calls.run_call(_runtime(inv), cmd.name, int(cmd.iteration))


def end_iteration(inv: Invocation) -> dict[str, Any]:
    _runtime(inv).data.clear()
    return {}


def save_checkpoint(inv: Invocation) -> dict[str, Any]:
    cmd = inv.command
    assert isinstance(cmd, m.SaveCheckpoint)
    return {"files": persist.save(_runtime(inv), Path(cmd.path), int(cmd.iteration))}


def restore_checkpoint(inv: Invocation) -> dict[str, Any]:
    cmd = inv.command
    assert isinstance(cmd, m.RestoreCheckpoint)
    persist.restore(_runtime(inv), Path(cmd.path), int(cmd.iteration))
    return {}


def export(inv: Invocation) -> dict[str, Any]:
    cmd = inv.command
    assert isinstance(cmd, m.Export)
    return {"written": persist.export(_runtime(inv), cmd.role, Path(cmd.path))}


def shutdown(inv: Invocation) -> dict[str, Any]:
    """Close any vLLM engines (and their worker processes) before the agent's own shutdown."""
    from rlhf_worker.agent import shutdown as leave_process_group
    from rlhf_worker.rollout.backend import shutdown_engines

    shutdown_engines()
    return leave_process_group(inv)


HANDLERS: dict[str, Handler] = {
    "shutdown": shutdown,
    "prepare": prepare,
    "load_role": load_role,
    "reallocate": reallocate,
    "release": release,
    "offload_role": offload_role,
    "restore_role": restore_role,
    "move_data": move_data,
    "run_call": run_call,
    "end_iteration": end_iteration,
    "save_checkpoint": save_checkpoint,
    "restore_checkpoint": restore_checkpoint,
    "export": export,
}
