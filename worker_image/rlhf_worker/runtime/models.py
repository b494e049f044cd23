"""A role's parameters on this rank: built, loaded, reallocated, released.

Tiny models (`source.tiny`) are built on first use into the job's output
directory and reused; several ranks may race to build the same one, so each
builds into a private temporary directory and renames it into place (the
build is deterministic: whichever rename wins, the files are the same).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import torch

from rlhf_operator.contract.sharding import Layout, role_head, role_shape
from rlhf_worker.engine import OptimizerConfig, Trainer
from rlhf_worker.engine.forward import Output
from rlhf_worker.model.checkpoint import load_shards
from rlhf_worker.model.config import ModelConfig
from rlhf_worker.model.decoder import Decoder
from rlhf_worker.model.tiny import build_tiny_model, build_tokenizer
from rlhf_worker.parallel.groups import context_for
from rlhf_worker.realloc.copies import house, release_copy, transient_copy
from rlhf_worker.realloc.execute import MemoryStats
from rlhf_worker.realloc.plan import bytes_received
from rlhf_worker.realloc.pool import StoragePool
from rlhf_worker.runtime.state import RoleState, Runtime, model_dir_for


def ensure_model_dirs(rt: Runtime) -> None:
    """Build the tiny models the job names (once per directory); check the others exist."""
    for role, model in rt.spec.models.present().items():
        if model.source is None:
            continue  # a reward function
        directory = model_dir_for(rt.output_dir, rt.base_dir, role, model)
        rt.model_dirs[role] = directory
        if model.source.tiny is not None and not (directory / "config.json").exists():
            assert model.architecture is not None
            hf_config = model.architecture.resolve().to_hf_config()
            directory.parent.mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}-", dir=directory.parent))
            build_tiny_model(tmp, hf_config, seed=model.source.tiny.seed, head=role_head(role))
            build_tokenizer(tmp, vocab_size=int(hf_config["vocab_size"]))
            try:
                os.rename(tmp, directory)
            except OSError:  # another rank won the race: same files
                shutil.rmtree(tmp, ignore_errors=True)
        elif not directory.is_dir():
            raise FileNotFoundError(
                f"spec.models.{role}.source.path: model directory {directory} does not exist"
            )


def load_role(rt: Runtime, role: str, layout: Layout) -> RoleState:
    """Load a role's shards for this rank under its home layout (the checkpoint on the volume)."""
    model = rt.spec.models.present()[role]
    assert model.architecture is not None
    arch = model.architecture.resolve()
    shape = role_shape(role, arch, rt.spec.algorithm.name)
    state = rt.roles.get(role)
    if rt.rank not in layout.ranks:
        state = state or RoleState(role, ModelConfig(arch, shape), layout)
        rt.roles[role] = state
        return state
    config, shards = load_shards(
        rt.model_dirs[role],
        layout,
        rt.rank,
        head=shape.head,
        expected=arch,
        dtype=rt.dtype(role),
        num_values=shape.num_values,
    )
    shards = {k: v.to(rt.device) for k, v in shards.items()}
    decoder = Decoder(config, context_for(layout, rt.rank), shards)
    state = RoleState(role, config, layout, model=decoder)
    if model.trainable is not False and role in trained_roles(rt):
        state.trainer = Trainer(decoder, optimizer_config(rt, role), output=output_of(role))
    rt.roles[role] = state
    return state


def trained_roles(rt: Runtime) -> set[str]:
    return {c.role for c in rt.calls.values() if c.kind == "train"}


def output_of(role: str) -> Output:
    return "logprobs" if role_head(role) == "lm" else "values"


def optimizer_config(rt: Runtime, role: str) -> OptimizerConfig:
    training = rt.spec.training
    lr = training.actor_learning_rate if role == "actor" else training.critic_learning_rate
    opt = training.optimizer
    return OptimizerConfig(
        lr=lr,
        betas=(opt.betas[0], opt.betas[1]),
        eps=opt.eps,
        weight_decay=opt.weight_decay,
        max_grad_norm=training.gradient_clipping,
    )


# Transient copies on CPU take their memory from here and give it back in
# `release_role`, so the copies of later iterations do not fault fresh pages in
# (see realloc/pool.py; on CUDA torch's caching allocator does this). One pool per
# worker process, which runs one job's runtime; it holds at most
# DEFAULT_POOL_BYTES of freed copies.
COPY_POOL = StoragePool()


def _copy_pool(rt: Runtime) -> StoragePool | None:
    return COPY_POOL if rt.device.type == "cpu" else None


def reallocate_role(rt: Runtime, role: str, src: Layout, dst: Layout) -> dict[str, float]:
    """Copy a role from `src` into a transient copy under `dst` (every rank of either takes part)."""
    state = rt.roles[role]
    plan = state.plan(src, dst, rt.node_of, rt.element_bytes(role))
    home = state.on(src).local_state() if rt.rank in src.ranks else None
    stats = MemoryStats()
    if home is not None and state.housing is None and houses(rt, role, src, dst):
        state.housing = (dst, house(home, plan, rt.rank, stats))
    copy = transient_copy(
        plan,
        home,
        rt.rank,
        dtype=rt.dtype(role),
        device=rt.device,
        pool=_copy_pool(rt),
        stats=stats,
        into=state.housing[1] if state.housing and state.housing[0] == dst else None,
    )
    if copy is not None:
        state.copies[dst] = Decoder(state.config, context_for(dst, rt.rank), copy)
    return {
        "bytes_received": float(bytes_received(plan).get(rt.rank, 0)),
        "bytes_copied": float(stats.local_copy_bytes),
    }


def houses(rt: Runtime, role: str, src: Layout, dst: Layout) -> bool:
    """Whether a reallocation keeps the role's home shards inside its copy for good
    (``spec.placement.inPlaceResharding``): from a trained role's home into the layout
    of its generation call, the copy the planner counts as resident."""
    if not rt.spec.placement.in_place_resharding:
        return False
    state = rt.roles[role]
    if state.trainer is None or src != state.home:
        return False
    generation = [n for n, c in rt.calls.items() if c.role == role and c.kind == "generate"]
    return any(rt.layouts[name] == dst for name in generation)


def release_role(rt: Runtime, role: str, layout: Layout) -> None:
    """Free a transient copy; on CPU its memory goes to the pool for the next one."""
    state = rt.roles.get(role)
    if state is None:
        return
    copy = state.copies.pop(layout, None)
    if copy is not None:
        # Shards shared with the home copy (views of it, or the buffers it is kept
        # inside) stay the home copy's memory.
        home = state.model.local_state() if state.model is not None else None
        shards: dict[str, torch.Tensor] = dict(copy.local_state())
        release_copy(shards, home, _copy_pool(rt))
