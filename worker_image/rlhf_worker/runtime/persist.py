"""Checkpoints of this rank's part of the job, and the final export.

A rank saves what it owns: for every trained role whose home layout includes
it, its dp chunks of the fp32 master weights (from which every replica's compute
weights are gathered again on restore) and of the AdamW moments (the dp
replicas of a shard save disjoint chunks); the algorithm states of its train
calls; its RNG states. Frozen roles never change: a restart reads them again
from their model directories. The coordinator merges every rank's
manifest and writes the commit marker (`contract.checkpoints.commit`), so a
checkpoint is complete only once every rank's files are safely on disk.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import torch

from rlhf_operator.contract.checkpoints import checkpoint_dir
from rlhf_operator.contract.sharding import Layout
from rlhf_worker.model.checkpoint import save_pretrained
from rlhf_worker.realloc.execute import reallocate
from rlhf_worker.realloc.plan import plan_reallocation
from rlhf_worker.runtime.rank_files import (
    capture_rng,
    join_tensors,
    read_rank_files,
    restore_rng,
    split_tensors,
    write_rank_files,
)
from rlhf_worker.runtime.state import Runtime

TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "tokenizer.model",
    "vocab.json",
    "merges.txt",
    "chat_template.jinja",
)


def save(rt: Runtime, root: Path, iteration: int) -> dict[str, Any]:
    """Write this rank's files of checkpoint `iteration`; returns its manifest entries."""
    tensors: dict[str, torch.Tensor] = {}
    meta: dict[str, Any] = {"iteration": iteration, "rank": rt.rank, "rng": capture_rng()}
    optimizers: dict[str, Any] = {}
    # Only trained roles change: frozen ones (ref, reward) are read again from their
    # model directories on a restart, and may be offloaded right now anyway.
    for role, state in sorted(rt.roles.items()):
        if state.model is None or state.trainer is None:
            continue
        for name, weight in state.trainer.master.items():
            tensors[f"{role}/param/{name}"] = weight.detach()
        adam = state.trainer.optimizer  # AdamW moments keyed like the shards
        for name, moment in adam.exp_avg.items():
            tensors[f"{role}/exp_avg/{name}"] = moment
        for name, moment in adam.exp_avg_sq.items():
            tensors[f"{role}/exp_avg_sq/{name}"] = moment
        optimizers[role] = {"step": adam.step}
    meta["optimizers"] = optimizers
    algo: dict[str, Any] = {}
    for call, algo_state in sorted(rt.algorithm_states.items()):
        algo_tensors, skeleton = split_tensors(algo_state.state_dict(), f"algorithm/{call}")
        tensors.update(algo_tensors)
        algo[call] = skeleton
    meta["algorithm"] = algo
    manifest = write_rank_files(root, iteration, rt.rank, tensors, meta)
    return dict(manifest)


def restore(rt: Runtime, root: Path, iteration: int) -> None:
    """Load this rank's files of a complete checkpoint into its home copies and states."""
    tensors, meta = read_rank_files(checkpoint_dir(root, iteration), rt.rank)
    with torch.no_grad():
        for role, state in rt.roles.items():
            if state.model is None or state.trainer is None:
                continue
            trainer = state.trainer
            trainer.shards.load_master(
                {name: tensors[f"{role}/param/{name}"] for name in trainer.master}
            )
            if role in meta["optimizers"]:
                adam = state.trainer.optimizer
                adam.step = int(meta["optimizers"][role]["step"])
                for moment, prefix in ((adam.exp_avg, "exp_avg"), (adam.exp_avg_sq, "exp_avg_sq")):
                    moment.clear()
                    for key, tensor in tensors.items():
                        if key.startswith(f"{role}/{prefix}/"):
                            moment[key.split("/", 2)[2]] = tensor.to(rt.device).clone()
    from rlhf_worker import algorithms

    algo = algorithms.for_name(rt.spec.algorithm.name)
    params = rt.spec.algorithm.params()
    for call, skeleton in meta.get("algorithm", {}).items():
        algo_state = algo.new_state(params)
        algo_state.load_state_dict(join_tensors(skeleton, tensors))
        rt.algorithm_states[call] = algo_state
    restore_rng(meta["rng"])


def export(rt: Runtime, role: str, path: Path) -> bool:
    """Write the role's full weights in Hugging Face format; returns whether this rank wrote them.

    The weights are gathered by a reallocation into a one-rank layout (the home
    layout's first rank): no other rank ever holds the full model.
    """
    state = rt.roles[role]
    target = Layout(ranks=(state.home.ranks[0],))
    plan = plan_reallocation(
        state.config.shape,
        state.home,
        target,
        rt.node_of,
        element_bytes=rt.element_bytes(role),
    )
    local = None
    if state.model is not None:
        local = {k: v.detach() for k, v in state.model.local_state().items()}
    full = reallocate(plan, local, rt.rank, dtype=rt.dtype(role), device=rt.device)
    if full is None or rt.rank != target.ranks[0]:
        return False
    tmp = path.with_name(path.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    hf_config, head = state.config.arch.to_hf_config(), state.config.shape.head
    save_pretrained(tmp, hf_config, {k: v.cpu() for k, v in full.items()}, head=head)
    source = rt.model_dirs.get(role)
    for name in TOKENIZER_FILES:
        if source is not None and (source / name).exists():
            shutil.copy2(source / name, tmp / name)
    shutil.rmtree(path, ignore_errors=True)
    tmp.rename(path)
    return True
