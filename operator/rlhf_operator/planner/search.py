"""Execution-plan search: simulated annealing over (mesh, layout) per call.

Candidates per call: for every class of meshes (same size, same node
spanning; costs depend on nothing else), the `top_k` fastest valid layouts
whose own memory fits a device. A step changes one call's placement (a random
mesh and one of its class's good layouts, another layout on the same mesh,
another call's mesh, or its role's home placement to avoid a reallocation),
evaluates the whole plan with the simulator, rejects plans that do not fit in
memory, and accepts worse ones with the Metropolis rule under a temperature
that decays geometrically. The walk starts from the best baseline and returns
the best plan seen, so it is never worse than that baseline.

Determinism: the walk takes a fixed number of steps (`max_steps`) with a
seeded generator, so the same job and seed give the same plan. The time
budget is a safety stop: if it cuts a walk short, the result may differ from
a run on a faster machine (the search reports how many steps it took).
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass

from ..api.dataflow import Call
from .cluster import Mesh
from .estimator import Layout, layout_problem, layouts_for
from .simulate import Assignment, Evaluation, Evaluator


@dataclass
class Option:
    """The good layouts of one call on one class of meshes."""

    meshes: list[Mesh]
    layouts: list[Layout]  # fastest first


class Candidates:
    def __init__(self, ev: Evaluator, top_k: int = 8) -> None:
        self.ev = ev
        cluster = ev.c
        usable = cluster.profile.usable_memory
        classes: dict[tuple[int, bool], list[Mesh]] = {}
        for mesh in cluster.meshes():
            classes.setdefault((mesh.size, cluster.nodes_of(mesh) > 1), []).append(mesh)
        self.classes = classes
        self.options: dict[str, list[Option]] = {}
        for call in ev.calls:
            opts = []
            for meshes in classes.values():
                mesh = meshes[0]
                scored = []
                for lay in layouts_for(ev.w, call, cluster, mesh):
                    cost = ev.cost(call, mesh, lay)
                    if cost.memory_bytes <= usable:
                        scored.append((cost.seconds, lay))
                scored.sort(key=lambda x: (x[0], x[1]))
                if scored:
                    opts.append(Option(meshes, [lay for _, lay in scored[:top_k]]))
            self.options[call.name] = opts

    def feasible_anywhere(self, call: str) -> bool:
        return bool(self.options[call])

    def halves(self, mesh: Mesh) -> tuple[Mesh, Mesh] | None:
        """The two halves of a mesh, when both are meshes."""
        if mesh.size % 2:
            return None
        a, b = Mesh(mesh.start, mesh.size // 2), Mesh(mesh.start + mesh.size // 2, mesh.size // 2)
        return (a, b) if self.ev.c.is_valid(a) and self.ev.c.is_valid(b) else None

    def best_on(self, call: Call, mesh: Mesh) -> list[Layout]:
        """Good layouts of `call` on `mesh` (fastest first)."""
        multi = self.ev.c.nodes_of(mesh) > 1
        for opt in self.options[call.name]:
            if opt.meshes[0].size == mesh.size and (self.ev.c.nodes_of(opt.meshes[0]) > 1) == multi:
                return opt.layouts
        return []


def _pick(rng: random.Random, items: list[Layout]) -> Layout:
    # Geometric bias towards the fastest layouts.
    i = 0
    while i < len(items) - 1 and rng.random() < 0.45:
        i += 1
    return items[i]


def _propose(
    rng: random.Random, ev: Evaluator, cands: Candidates, cur: Assignment
) -> Assignment | None:
    calls = [c for c in ev.calls if cands.options[c.name]]
    if not calls:
        return None
    call = rng.choice(calls)
    new = dict(cur)
    move = rng.random()
    if move < 0.1 and len(calls) > 1:
        # Two calls side by side on the two halves of a mesh (they may then overlap).
        other = rng.choice([c for c in calls if c.name != call.name])
        big = [o for o in cands.options[call.name] if o.meshes[0].size >= 2]
        if not big:
            return None
        mesh = rng.choice(rng.choice(big).meshes)
        halves = cands.halves(mesh)
        if halves is None:
            return None
        if rng.random() < 0.5:
            halves = (halves[1], halves[0])
        for c, half in ((call, halves[0]), (other, halves[1])):
            lays = cands.best_on(c, half)
            if not lays:
                return None
            new[c.name] = (half, _pick(rng, lays))
        return new
    if move < 0.45:
        opt = rng.choice(cands.options[call.name])
        new[call.name] = (rng.choice(opt.meshes), _pick(rng, opt.layouts))
    elif move < 0.65:
        mesh = cur[call.name][0]
        lays = cands.best_on(call, mesh)
        if not lays:
            return None
        new[call.name] = (mesh, _pick(rng, lays))
    elif move < 0.85:
        other = rng.choice(ev.calls)
        mesh = cur[other.name][0]
        lays = cands.best_on(call, mesh)
        if not lays:
            return None
        new[call.name] = (mesh, _pick(rng, lays))
    else:
        home = ev.home_call[call.role]
        if home == call.name:
            # Move the whole role: every call of it to this call's new random placement's mesh.
            opt = rng.choice(cands.options[call.name])
            mesh = rng.choice(opt.meshes)
            lay = _pick(rng, opt.layouts)
            new[call.name] = (mesh, lay)
            for other in ev.calls:
                if other.role == call.role and other.name != call.name:
                    fitted = _same_split(ev, other, mesh, lay)
                    if fitted is not None:
                        new[other.name] = (mesh, fitted)
        else:
            mesh, lay = cur[home]
            fitted = _same_split(ev, call, mesh, lay)
            if fitted is None:
                return None
            new[call.name] = (mesh, fitted)
    return new


def _same_split(ev: Evaluator, call: Call, mesh: Mesh, lay: Layout) -> Layout | None:
    """A layout of `call` with the same dp/tp/pp as `lay` (micro-batches adapted), if valid."""
    best = None
    m = 1
    while m <= 64:
        cand = Layout(lay.dp, lay.tp, lay.pp, m, lay.recompute and call.kind == "train")
        if layout_problem(ev.w, call, ev.c, mesh, cand) is None:
            secs = ev.cost(call, mesh, cand).seconds
            if best is None or secs < best[0]:
                best = (secs, cand)
        m *= 2
    return best[1] if best else None


@dataclass
class SearchResult:
    assignment: Assignment
    evaluation: Evaluation
    steps: int
    seconds: float


def anneal(
    ev: Evaluator,
    cands: Candidates,
    start: Assignment,
    *,
    seed: int = 0,
    max_steps: int = 4000,
    time_budget: float = 10.0,
    chains: int = 2,
) -> SearchResult:
    """Simulated annealing from `start` (which must be feasible); the best plan seen."""
    t0 = time.monotonic()
    deadline = t0 + time_budget
    first = ev.evaluate(start)
    if first is None:
        raise ValueError("the starting plan does not fit in memory")
    best, best_eval = dict(start), first
    steps_done = 0
    per_chain = max(1, max_steps // chains)
    for chain in range(chains):
        rng = random.Random(seed * 1000003 + chain)
        cur, cur_eval = dict(best), best_eval
        t_hi = 0.05 * cur_eval.iteration_seconds
        t_lo = 1e-4 * cur_eval.iteration_seconds
        for step in range(per_chain):
            if time.monotonic() > deadline:
                break
            steps_done += 1
            temp = t_hi * (t_lo / t_hi) ** (step / max(1, per_chain - 1))
            prop = _propose(rng, ev, cands, cur)
            if prop is None or prop == cur:
                continue
            got = ev.evaluate(prop)
            if got is None:
                continue
            delta = got.iteration_seconds - cur_eval.iteration_seconds
            if delta <= 0 or rng.random() < math.exp(-delta / temp):
                cur, cur_eval = prop, got
                if got.iteration_seconds < best_eval.iteration_seconds:
                    best, best_eval = dict(prop), got
    best, best_eval, polished = polish(ev, cands, best, best_eval, deadline)
    return SearchResult(best, best_eval, steps_done + polished, time.monotonic() - t0)


def polish(
    ev: Evaluator,
    cands: Candidates,
    assign: Assignment,
    current: Evaluation,
    deadline: float,
    rounds: int = 3,
) -> tuple[Assignment, Evaluation, int]:
    """Coordinate descent after the walk: each call in turn tries the good layouts on its own
    mesh, on every other call's mesh and on those meshes' halves; improvements are kept."""
    tried = 0
    for _ in range(rounds):
        improved = False
        for call in ev.calls:
            meshes: list[Mesh] = []
            for other in ev.calls:
                mesh = assign[other.name][0]
                for m in (mesh, *(cands.halves(mesh) or ())):
                    if m not in meshes:
                        meshes.append(m)
            for mesh in meshes:
                for lay in cands.best_on(call, mesh):
                    if time.monotonic() > deadline:
                        return assign, current, tried
                    if (mesh, lay) == assign[call.name]:
                        continue
                    prop = dict(assign)
                    prop[call.name] = (mesh, lay)
                    tried += 1
                    got = ev.evaluate(prop)
                    if got is not None and got.iteration_seconds < current.iteration_seconds * (
                        1 - 1e-9
                    ):
                        assign, current, improved = prop, got, True
        if not improved:
            break
    return assign, current, tried
