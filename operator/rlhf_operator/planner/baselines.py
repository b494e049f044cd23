"""Baseline plans, estimated with the same estimator as the search.

- `colocated` (DeepSpeed-Chat style): every call on all devices with one
  dp/tp/pp shared by every model (no reallocation), the fastest that fits.
- `split` (OpenRLHF style): generation on its own half of the devices, every
  other call colocated on the other half; the actor's weights are sent to the
  generation devices every iteration (a reallocation across the halves).
- `heuristic` (Megatron style, like ReaL's heuristic): every call on all
  devices; each model at the largest tensor parallelism inside a node and the
  fewest pipeline stages that fit, the rest data parallel; inference of a
  trained role reuses its training layout; generation with the smallest
  tensor parallelism that fits and no pipeline.

Each baseline picks, per unit (a role, or a call), an ordered list of options;
when the whole plan does not fit, the unit with the largest footprint moves to
its next option with a smaller footprint, until it fits or nothing is left.
"""

from __future__ import annotations

from collections.abc import Callable

from ..api.dataflow import Call
from .cluster import Mesh
from .estimator import Strategy, strategies_for, strategy_problem
from .simulate import Assignment, Evaluator

# An option: placements for the unit's calls, its time, its per-device footprint.
OptionT = tuple[dict[str, tuple[Mesh, Strategy]], float, float]


def _best_m(
    ev: Evaluator, call: Call, mesh: Mesh, dp: int, tp: int, pp: int, recompute: bool
) -> tuple[Strategy, float, float] | None:
    best = None
    m = 1
    while m <= 64:
        lay = Strategy(dp, tp, pp, m, recompute and call.kind == "train")
        if strategy_problem(ev.w, call, ev.c, mesh, lay) is None:
            cost = ev.cost(call, mesh, lay)
            if best is None or cost.seconds < best[1]:
                best = (lay, cost.seconds, cost.memory_bytes)
        m *= 2
    return best


def _splits(ev: Evaluator, calls: list[Call], mesh: Mesh) -> list[tuple[int, int, int, bool]]:
    out = set()
    for c in calls:
        for lay in strategies_for(ev.w, c, ev.c, mesh):
            out.add((lay.dp, lay.tp, lay.pp, lay.recompute))
    return sorted(out)


def _role_options(ev: Evaluator, calls: list[Call], mesh: Mesh) -> list[OptionT]:
    """One dp/tp/pp for all `calls` (one role) on `mesh`, fastest first."""
    options = []
    for dp, tp, pp, rc in _splits(ev, calls, mesh):
        if rc and not any(c.kind == "train" for c in calls):
            continue
        placed: dict[str, tuple[Mesh, Strategy]] = {}
        total = 0.0
        footprint = 0.0
        for c in calls:
            got = _best_m(ev, c, mesh, dp, tp, pp, rc)
            if got is None:
                break
            placed[c.name] = (mesh, got[0])
            total += got[1]
            footprint = max(footprint, got[2])
        else:
            if footprint <= ev.c.profile.usable_memory:
                options.append((placed, total, footprint))
    options.sort(key=lambda o: (o[1], o[2]))
    return options


def _assemble(ev: Evaluator, units: list[list[OptionT]]) -> Assignment | None:
    """Pick the first option of each unit; step units down in footprint until the plan fits."""
    if any(not opts for opts in units):
        return None
    choice = [0] * len(units)
    for _ in range(400):
        assign: Assignment = {}
        for u, opts in enumerate(units):
            assign.update(opts[choice[u]][0])
        if ev.evaluate(assign) is not None:
            return assign
        order = sorted(range(len(units)), key=lambda u: -units[u][choice[u]][2])
        for u in order:
            cur_fp = units[u][choice[u]][2]
            nxt = next(
                (i for i in range(choice[u] + 1, len(units[u])) if units[u][i][2] < cur_fp), None
            )
            if nxt is not None:
                choice[u] = nxt
                break
        else:
            return None
    return None


def _by_role(calls: tuple[Call, ...] | list[Call]) -> dict[str, list[Call]]:
    out: dict[str, list[Call]] = {}
    for c in calls:
        out.setdefault(c.role, []).append(c)
    return out


def colocated(ev: Evaluator) -> Assignment | None:
    """Every call on all devices with one dp/tp/pp (micro-batches and recomputation per call)."""
    mesh = ev.c.full()
    model_calls = [c for c in ev.calls if ev.w.roles[c.role].arch is not None]
    options = _role_options(ev, model_calls, mesh)
    for opt in options:
        assign = dict(opt[0])
        for c in ev.calls:
            if c.name not in assign:
                assign[c.name] = (mesh, Strategy(mesh.size, 1, 1, 1))
        if ev.evaluate(assign) is not None:
            return assign
    return None


def split(ev: Evaluator) -> Assignment | None:
    n = ev.c.devices
    if n < 2 or not any(c.kind == "generate" for c in ev.calls):
        return None
    if n <= ev.c.per_node:
        half = n // 2
        if half & (half - 1):
            return None
    elif (n // ev.c.per_node) % 2:
        return None
    else:
        half = n // 2
    gen_mesh, rest = Mesh(0, half), Mesh(half, n - half)
    units = []
    for cs in _by_role(ev.calls).values():
        gens = [c for c in cs if c.kind == "generate"]
        others = [c for c in cs if c.kind != "generate"]
        if gens:
            units.append(_role_options(ev, gens, gen_mesh))
        if others:
            units.append(_role_options(ev, others, rest))
    return _assemble(ev, units)


def heuristic(ev: Evaluator) -> Assignment | None:
    mesh = ev.c.full()
    per_node = ev.c.per_node
    units = []

    def rule_key(opt: OptionT, prefer_big_tp: bool) -> tuple[object, ...]:
        lay = next(iter(opt[0].values()))[1]
        tp_rank = -lay.tp if prefer_big_tp else lay.tp
        tp_rank = tp_rank if lay.tp <= per_node else 10**6
        return (lay.pp, tp_rank, lay.recompute, opt[1])

    for cs in _by_role(ev.calls).values():
        gens = [c for c in cs if c.kind == "generate"]
        others = [c for c in cs if c.kind != "generate"]
        if others:
            opts = _role_options(ev, others, mesh)
            opts.sort(key=lambda o: rule_key(o, True))
            units.append(opts)
        for g in gens:
            opts = _role_options(ev, [g], mesh)
            opts = [o for o in opts if next(iter(o[0].values()))[1].pp == 1] or opts
            opts.sort(key=lambda o: rule_key(o, False))
            units.append(opts)
    return _assemble(ev, units)


BASELINES: dict[str, Callable[[Evaluator], Assignment | None]] = {
    "colocated": colocated,
    "split": split,
    "heuristic": heuristic,
}
