"""Tensor, pipeline and data parallelism over explicit process groups.

We use plain ``torch.distributed`` process groups and a few autograd functions
(Megatron style) rather than DeviceMesh / DTensor. What we measured (torch
2.13, gloo, 4 CPU processes): a ``DeviceMesh`` over a subset of the world built
by its members only works; the same two sub-meshes built on every rank (as
gloo's ``new_group`` rule would suggest) did not finish within 60 s. So
DeviceMesh *could* carry the groups; we still keep our own because:

* Reallocation (``rlhf_worker.realloc``) produces and consumes plain local
  tensors, one per ``sharding.rank_shards`` region, by Hugging Face name.
  DTensor placements do not express our conventions directly (pipeline stages
  own different parameters, tied embeddings live on two stages), so every
  parameter would be wrapped and unwrapped around each call.
* The ops we need are few and explicit: all-reduce in tp (``tensor.py``),
  p2p between stages (``pipeline.py``), a flat all-reduce of gradients in dp
  and a global norm (``data.py``), and per-token log-probabilities over a
  vocabulary split (torch's ``loss_parallel`` covers cross-entropy of DTensor
  logits only). The same code runs on gloo and NCCL.
* ``groups_for`` creates every layout's groups in one fixed order on every
  rank, which is what gloo requires when several layouts of several roles
  coexist on overlapping rank subsets.

Beware: ``new_group`` numbers a group's members by ascending global rank, not
in the layout's order; gathers reorder explicitly (``all_gather_last_dim``),
point-to-point and broadcasts use global ranks.

Without a process group (single process, layouts of size one) every
collective is a no-op, so the single-process reference runs the same code.
"""

from rlhf_worker.parallel.data import dp_slice
from rlhf_worker.parallel.groups import (
    LayoutGroups,
    ParallelContext,
    context_for,
    groups_for,
    layout_group_ranks,
    single_process_context,
)

__all__ = [
    "LayoutGroups",
    "ParallelContext",
    "context_for",
    "dp_slice",
    "groups_for",
    "layout_group_ranks",
    "single_process_context",
]
