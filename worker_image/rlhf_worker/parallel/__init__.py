"""Tensor, pipeline and data parallelism over explicit process groups.

We use plain ``torch.distributed`` process groups and a few autograd functions
(Megatron style) rather than DeviceMesh / DTensor. Why:

* Reallocation (``rlhf_worker.realloc``) produces and consumes plain local
  tensors, one per ``sharding.rank_shards`` region; DTensor placements cannot
  express our layout conventions directly (grouped-query q/k/v head order, the
  pipeline split of layers, tied embeddings on two stages), so every
  parameter would need wrapping and unwrapping around each call.
* Several layouts of several roles coexist in one world on overlapping rank
  subsets. ``DeviceMesh`` creates its own sub-groups with ``new_group`` for
  every mesh dimension; on gloo ``new_group`` must be called by every rank of
  the world in the same order, which a per-call mesh built only by its
  members does not do. ``groups_for`` below creates all of a layout's groups
  in one fixed order on every rank instead.
* The collectives we need are few and explicit (all-reduce in tp, p2p between
  stages, all-reduce of gradients in dp), and the same code runs on gloo and
  NCCL.

Without a process group (single process, layouts of size one) every
collective is a no-op, so the single-process reference runs the same code.
"""
