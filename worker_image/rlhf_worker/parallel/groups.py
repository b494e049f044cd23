"""Process groups of a layout, created in one fixed order on every rank.

With gloo, ``torch.distributed.new_group`` must be called by every rank of the
world, in the same order, even by ranks outside the group. ``groups_for`` is
therefore deterministic and cached: every rank calls it for every layout it is
told about, in the order it is told, and each call creates the layout's groups
in the order: whole layout, tp groups, dp groups, pp groups, tied-embedding
groups. Groups of one rank are not created (collectives on them are no-ops).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch.distributed as dist

from rlhf_operator.contract.sharding import Layout

Group = Any  # a torch ProcessGroup; None means "no communication needed"


@dataclass(frozen=True)
class LayoutGroups:
    """Every group of a layout, keyed by the ranks it contains."""

    layout: Layout
    groups: dict[tuple[int, ...], Group]

    def get(self, ranks: tuple[int, ...]) -> Group:
        return self.groups.get(ranks) if len(ranks) > 1 else None


_CACHE: dict[Layout, LayoutGroups] = {}


def layout_group_ranks(layout: Layout) -> list[tuple[int, ...]]:
    """The rank tuples of every group of a layout, in creation order (pure)."""
    out: list[tuple[int, ...]] = [tuple(layout.ranks)]
    out += [layout.tp_group(p, d) for p in range(layout.pp) for d in range(layout.dp)]
    out += [layout.dp_group(p, t) for p in range(layout.pp) for t in range(layout.tp)]
    out += [layout.pp_group(d, t) for d in range(layout.dp) for t in range(layout.tp)]
    if layout.pp > 2:
        # Tied embeddings live on the first and the last stage; their gradients meet here.
        out += [
            (layout.rank(0, d, t), layout.rank(layout.pp - 1, d, t))
            for d in range(layout.dp)
            for t in range(layout.tp)
        ]
    return [ranks for ranks in out if len(ranks) > 1]


def groups_for(layout: Layout) -> LayoutGroups:
    """Create (once) and return a layout's groups. Every rank of the world must call this."""
    cached = _CACHE.get(layout)
    if cached is not None:
        return cached
    groups: dict[tuple[int, ...], Group] = {}
    if dist.is_available() and dist.is_initialized():
        for ranks in layout_group_ranks(layout):
            if ranks not in groups:
                groups[ranks] = dist.new_group(list(ranks))
    elif layout.size > 1:
        raise RuntimeError(f"layout of {layout.size} ranks needs torch.distributed initialised")
    result = LayoutGroups(layout, groups)
    _CACHE[layout] = result
    return result


@dataclass(frozen=True)
class ParallelContext:
    """Where one rank sits in a layout and the groups it talks through."""

    layout: Layout
    rank: int
    stage: int
    dp_rank: int
    tp_rank: int
    tp_group: Group
    dp_group: Group
    pp_group: Group
    tied_group: Group  # first and last stage of this (dp, tp) position; None if pp == 1
    layout_group: Group

    @property
    def pp(self) -> int:
        return self.layout.pp

    @property
    def tp(self) -> int:
        return self.layout.tp

    @property
    def dp(self) -> int:
        return self.layout.dp

    @property
    def is_first(self) -> bool:
        return self.stage == 0

    @property
    def is_last(self) -> bool:
        return self.stage == self.layout.pp - 1

    def stage_rank(self, stage: int) -> int:
        """The global rank of another stage at this rank's (dp, tp) position."""
        return self.layout.rank(stage, self.dp_rank, self.tp_rank)


def context_for(layout: Layout, rank: int) -> ParallelContext:
    """This rank's place in a layout; creates the layout's groups if needed (collective)."""
    groups = groups_for(layout)
    p, d, t = layout.coords(rank)
    tied = (layout.rank(0, d, t), layout.rank(layout.pp - 1, d, t)) if layout.pp > 1 else (rank,)
    return ParallelContext(
        layout=layout,
        rank=rank,
        stage=p,
        dp_rank=d,
        tp_rank=t,
        tp_group=groups.get(layout.tp_group(p, d)),
        dp_group=groups.get(layout.dp_group(p, t)),
        pp_group=groups.get(layout.pp_group(d, t)),
        tied_group=groups.get(tied),
        layout_group=groups.get(tuple(layout.ranks)),
    )


def single_process_context() -> ParallelContext:
    """The context of the single-process reference: one rank, no communication."""
    return context_for(Layout(ranks=(0,)), 0)
