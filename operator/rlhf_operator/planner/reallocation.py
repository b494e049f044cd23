"""Bytes a parameter reallocation moves, under the contract's layout conventions.

The conventions are those of `contract.sharding`, which the workers shard by:
ranks of a layout are `Layout.rank(p, d, t)` of the mesh's devices, pipeline
stages hold `stage_layers`, and tensor parallelism splits each split tensor into
tp contiguous equal slices (norms and a value head replicated). This module
counts with the model's per-layer totals (`ModelShape.counts`) rather than
tensor by tensor, fast enough for the search's inner loop; the tests check it
against the workers' exact reallocation plans.

A destination rank needs, for every tensor of its stage, its tp slice. What it
already holds (when it is also in the source layout) it keeps; the rest comes
from a source rank, over the intra-node link when some source rank on the same
node holds that piece, else across nodes. `transfer` counts those bytes per
destination rank. Sender congestion and deduplication of inter-node traffic
per node (ReaL sends each piece once per node and fans out locally) are not
modelled: the time is the slowest destination's intra + inter bytes over the
respective link bandwidths.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..contract.sharding import Layout, stage_layers
from .cluster import Cluster
from .workload import RoleModel


@dataclass(frozen=True)
class TransferCost:
    total_bytes: int  # summed over destination ranks
    intra_bytes: int  # the part of total_bytes sent from a rank on the destination's node
    max_intra_bytes: int  # the destination rank with most intra-node bytes
    max_inter_bytes: int  # the destination rank with most inter-node bytes
    seconds: float


def _virtual_stage_bounds(layers: int, pp: int) -> list[tuple[int, int]]:
    """[first, last) virtual layer of each stage (embedding with stage 0, head with the last)."""
    out = []
    for s in range(pp):
        layers_of = stage_layers(layers, pp, s)
        first = 0 if s == 0 else layers_of.start + 1
        last = layers + 2 if s == pp - 1 else layers_of.stop + 1
        out.append((first, last))
    return out


def _rank_positions(layout: Layout) -> dict[int, tuple[int, int]]:
    """Global device -> (stage, tp index) of a layout."""
    out = {}
    for p in range(layout.pp):
        for d in range(layout.dp):
            for t in range(layout.tp):
                out[layout.rank(p, d, t)] = (p, t)
    return out


def transfer(role: RoleModel, src: Layout, dst: Layout, cluster: Cluster) -> TransferCost:
    """Bytes and time to move `role`'s parameters from layout `src` to layout `dst`."""
    return _transfer(role, src, dst, cluster.per_node, cluster.profile.intra_node_bandwidth,
                     cluster.profile.inter_node_bandwidth, cluster.profile.intra_node_latency,
                     cluster.profile.inter_node_latency)  # fmt: skip


def _transfer(
    role: RoleModel,
    src: Layout,
    dst: Layout,
    per_node: int,
    intra_bw: float,
    inter_bw: float,
    intra_lat: float,
    inter_lat: float,
) -> TransferCost:
    if role.arch is None:
        return TransferCost(0, 0, 0, 0, 0.0)
    L = role.layers
    # Tensor slices as bitmasks over `units` equal parts of each split tensor.
    units = max(src.tp, dst.tp)
    full = (1 << units) - 1

    def mask(t: int, tp: int) -> int:
        w = units // tp
        return ((1 << w) - 1) << (t * w)

    # Prefix sums over virtual layers (0 embedding, 1..L blocks, L+1 head) of split/replicated bytes.
    b = role.dtype_bytes
    split = (
        [role.embedding_params * b]
        + [role.layer_split_params * b] * L
        + [role.head_split_params * b]
    )
    repl = [0] + [role.layer_replicated_params * b] * L + [role.head_replicated_params * b]
    ps, pr = [0.0], [0.0]
    for x, y in zip(split, repl, strict=True):
        ps.append(ps[-1] + x)
        pr.append(pr[-1] + y)

    src_bounds = _virtual_stage_bounds(L, src.pp)
    dst_bounds = _virtual_stage_bounds(L, dst.pp)
    src_pos = _rank_positions(src)
    # Per node and source stage: the union of tp slices some source rank there holds.
    local: dict[int, dict[int, int]] = {}
    for dev, (p, t) in src_pos.items():
        per = local.setdefault(dev // per_node, {})
        per[p] = per.get(p, 0) | mask(t, src.tp)
    no_local: dict[int, int] = {}

    total = 0.0
    total_intra = 0.0
    max_intra = 0.0
    max_inter = 0.0
    memo: dict[tuple[object, ...], tuple[float, float]] = {}
    for p in range(dst.pp):
        lo, hi = dst_bounds[p]
        overlapping = [
            (sp, max(lo, slo), min(hi, shi))
            for sp, (slo, shi) in enumerate(src_bounds)
            if min(hi, shi) > max(lo, slo)
        ]
        for d in range(dst.dp):
            for t in range(dst.tp):
                dev = dst.rank(p, d, t)
                own = src_pos.get(dev)
                node = dev // per_node
                here = local.get(node, no_local)
                key = (p, t, own, id(here))
                got = memo.get(key)
                if got is None:
                    want = mask(t, dst.tp)
                    intra = inter = 0.0
                    for sp, first, last in overlapping:
                        held_own = own is not None and own[0] == sp
                        own_mask = mask(own[1], src.tp) if held_own and own else 0
                        missing = want & ~own_mask & full
                        here_mask = here.get(sp, 0)
                        n_local = (missing & here_mask).bit_count()
                        n_remote = missing.bit_count() - n_local
                        sb = ps[last] - ps[first]
                        rb = pr[last] - pr[first]
                        intra += sb * n_local / units
                        inter += sb * n_remote / units
                        if not held_own:
                            if here_mask:
                                intra += rb
                            else:
                                inter += rb
                    got = (intra, inter)
                    memo[key] = got
                intra, inter = got
                total += intra + inter
                total_intra += intra
                max_intra = max(max_intra, intra)
                max_inter = max(max_inter, inter)
    seconds = 0.0
    if total > 0:
        seconds = max_intra / intra_bw + max_inter / inter_bw
        seconds += intra_lat * (src.pp + dst.pp) + (inter_lat if max_inter else 0.0)
    return TransferCost(
        round(total), round(total_intra), round(max_intra), round(max_inter), seconds
    )
