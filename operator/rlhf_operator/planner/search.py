"""Execution-plan search: simulated annealing over (mesh, layout) per call, from several starts.

Candidates per call: for every class of meshes (same size, same node spanning;
costs depend on nothing else), the `top_k` fastest valid layouts whose own
memory fits a device, plus the `lean_k` leanest ones (when the roles' resident
copies crowd a device, only a lean layout fits beside them).

A step changes one or two calls' placements: a random mesh with one of its
class's good layouts, another layout on the same mesh, another call's mesh, a
neighbouring mesh (the parent block, the sibling block, a half), two calls
side by side on the two halves of a mesh, two calls swapping meshes, or a whole
role moved to one placement. The whole plan is evaluated by the simulator;
plans that do not fit in memory are rejected, worse ones accepted with the
Metropolis rule under a temperature that decays geometrically.

Walks: one from each starting plan (the baselines, each call at its fastest
fitting placement), then further walks from the best plan seen while a walk
still improves it and steps remain; a coordinate descent polishes the result.
The best plan seen is returned, so the search is never worse than its best
start.

Determinism: every walk takes a fixed number of steps with a generator seeded
from `seed` and the walk's number, and whether another walk runs depends only on
the plans found, so the same job and seed give the same plan. The time budget
is a safety stop: if it cuts the search short, the result may differ from a run
on a faster machine (the search reports how many steps it took).
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass

from ..api.dataflow import Call
from .cluster import Mesh
from .estimator import Strategy, strategies_for, strategy_problem
from .simulate import Assignment, Evaluation, Evaluator

ClassKey = tuple[int, bool]  # mesh size, spans nodes


class Candidates:
    def __init__(self, ev: Evaluator, top_k: int = 8, lean_k: int = 3) -> None:
        self.ev = ev
        cluster = ev.c
        usable = cluster.profile.usable_memory
        classes: dict[ClassKey, list[Mesh]] = {}
        for mesh in cluster.meshes():
            classes.setdefault(self.class_of(mesh), []).append(mesh)
        self.classes = classes
        self.layouts: dict[tuple[str, ClassKey], list[Strategy]] = {}
        self.mesh_classes: dict[str, list[ClassKey]] = {}
        for call in ev.calls:
            keys = []
            for key, meshes in classes.items():
                mesh = meshes[0]
                scored = []
                for lay in strategies_for(ev.w, call, cluster, mesh):
                    cost = ev.cost(call, mesh, lay)
                    if cost.memory_bytes <= usable:
                        scored.append((cost.seconds, cost.memory_bytes, lay))
                if not scored:
                    continue
                scored.sort(key=lambda x: (x[0], x[2]))
                keep = scored[:top_k]
                for item in sorted(scored, key=lambda x: (x[1], x[0], x[2]))[:lean_k]:
                    if item not in keep:
                        keep.append(item)
                keep.sort(key=lambda x: (x[0], x[2]))
                self.layouts[(call.name, key)] = [lay for _, _, lay in keep]
                keys.append(key)
            self.mesh_classes[call.name] = keys

    def class_of(self, mesh: Mesh) -> ClassKey:
        return (mesh.size, self.ev.c.nodes_of(mesh) > 1)

    def feasible_anywhere(self, call: str) -> bool:
        return bool(self.mesh_classes[call])

    def best_on(self, call: Call, mesh: Mesh) -> list[Strategy]:
        """Good layouts of `call` on `mesh` (fastest first)."""
        return self.layouts.get((call.name, self.class_of(mesh)), [])

    def halves(self, mesh: Mesh) -> tuple[Mesh, Mesh] | None:
        """The two halves of a mesh, when both are meshes."""
        if mesh.size % 2:
            return None
        a, b = Mesh(mesh.start, mesh.size // 2), Mesh(mesh.start + mesh.size // 2, mesh.size // 2)
        return (a, b) if self.ev.c.is_valid(a) and self.ev.c.is_valid(b) else None

    def neighbours(self, mesh: Mesh) -> list[Mesh]:
        """The block `mesh` is half of, its other half, and its own halves (those that exist)."""
        out: list[Mesh] = []
        parent = Mesh(mesh.start - mesh.start % (2 * mesh.size), 2 * mesh.size)
        if self.ev.c.is_valid(parent):
            out.append(parent)
            halves = self.halves(parent)
            if halves:
                out.append(halves[1] if halves[0] == mesh else halves[0])
        elif mesh != self.ev.c.full():
            out.append(self.ev.c.full())  # a node count that is not a power of two
        out.extend(self.halves(mesh) or ())
        return out


def _pick(rng: random.Random, items: list[Strategy]) -> Strategy:
    # Geometric bias towards the fastest layouts.
    i = 0
    while i < len(items) - 1 and rng.random() < 0.45:
        i += 1
    return items[i]


def _place(rng: random.Random, cands: Candidates, new: Assignment, call: Call, mesh: Mesh) -> bool:
    """Put `call` on `mesh` with one of its good layouts there; False when it has none."""
    lays = cands.best_on(call, mesh)
    if not lays:
        return False
    new[call.name] = (mesh, _pick(rng, lays))
    return True


def _propose(
    rng: random.Random, ev: Evaluator, cands: Candidates, cur: Assignment
) -> Assignment | None:
    calls = [c for c in ev.calls if cands.mesh_classes[c.name]]
    if not calls:
        return None
    call = rng.choice(calls)
    others = [c for c in calls if c.name != call.name]
    new = dict(cur)
    move = rng.random()
    if move < 0.1 and others:
        # Two calls side by side on the two halves of a mesh (they may then overlap).
        other = rng.choice(others)
        key = rng.choice(cands.mesh_classes[call.name])
        halves = cands.halves(rng.choice(cands.classes[key]))
        if halves is None:
            return None
        if rng.random() < 0.5:
            halves = (halves[1], halves[0])
        ok = _place(rng, cands, new, call, halves[0]) and _place(rng, cands, new, other, halves[1])
        return new if ok else None
    if move < 0.2 and others:
        # Two calls swap meshes.
        other = rng.choice(others)
        a, b = cur[call.name][0], cur[other.name][0]
        if a == b:
            return None
        ok = _place(rng, cands, new, call, b) and _place(rng, cands, new, other, a)
        return new if ok else None
    if move < 0.4:
        key = rng.choice(cands.mesh_classes[call.name])
        ok = _place(rng, cands, new, call, rng.choice(cands.classes[key]))
    elif move < 0.55:
        ok = _place(rng, cands, new, call, cur[call.name][0])
    elif move < 0.7:
        ok = _place(rng, cands, new, call, cur[rng.choice(ev.calls).name][0])
    elif move < 0.85:
        near = cands.neighbours(cur[call.name][0])
        ok = bool(near) and _place(rng, cands, new, call, rng.choice(near))
    else:
        ok = _move_role(rng, ev, cands, new, call)
    return new if ok else None


def _move_role(
    rng: random.Random, ev: Evaluator, cands: Candidates, new: Assignment, call: Call
) -> bool:
    """The home call: every call of its role follows it to a new placement. Another call: it
    joins its role's home placement (no reallocation)."""
    home = ev.home_call[call.role]
    if home == call.name:
        key = rng.choice(cands.mesh_classes[call.name])
        mesh = rng.choice(cands.classes[key])
        lay = _pick(rng, cands.layouts[(call.name, key)])
        new[call.name] = (mesh, lay)
        for other in ev.calls:
            if other.role == call.role and other.name != call.name:
                fitted = _same_split(ev, other, mesh, lay)
                if fitted is not None:
                    new[other.name] = (mesh, fitted)
        return True
    mesh, lay = new[home]
    fitted = _same_split(ev, call, mesh, lay)
    if fitted is None:
        return False
    new[call.name] = (mesh, fitted)
    return True


def _same_split(ev: Evaluator, call: Call, mesh: Mesh, lay: Strategy) -> Strategy | None:
    """A layout of `call` with the same dp/tp/pp as `lay` (micro-batches adapted), if valid."""
    best = None
    m = 1
    while m <= 64:
        train = call.kind == "train"
        cand = Strategy(
            lay.dp, lay.tp, lay.pp, m, lay.recompute and train, lay.zero_stage if train else 1
        )
        if strategy_problem(ev.w, call, ev.c, mesh, cand) is None:
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
    walks: int = 1


class _Clock:
    """The safety stop shared by every walk of one search."""

    def __init__(self, budget: float) -> None:
        self.deadline = time.monotonic() + budget

    def out(self) -> bool:
        return time.monotonic() > self.deadline


def _walk(
    ev: Evaluator,
    cands: Candidates,
    start: Assignment,
    start_seconds: float,
    rng: random.Random,
    steps: int,
    clock: _Clock,
) -> tuple[Assignment, float, int]:
    """One annealing walk; the best plan it saw, its seconds, and the steps taken."""
    cur, cur_s = start, start_seconds
    best, best_s = start, start_seconds
    t_hi = 0.05 * start_seconds
    t_lo = 1e-4 * start_seconds
    done = 0
    for step in range(steps):
        if clock.out():
            break
        done += 1
        temp = t_hi * (t_lo / t_hi) ** (step / max(1, steps - 1))
        prop = _propose(rng, ev, cands, cur)
        if prop is None or prop == cur:
            continue
        got = ev.seconds(prop)
        if got is None:
            continue
        delta = got - cur_s
        if delta <= 0 or rng.random() < math.exp(-delta / temp):
            cur, cur_s = prop, got
            if got < best_s:
                best, best_s = prop, got
    return best, best_s, done


def search(
    ev: Evaluator,
    cands: Candidates,
    starts: list[Assignment],
    *,
    seed: int = 0,
    max_steps: int = 24000,
    walk_steps: int = 3000,
    patience: int = 2,
    time_budget: float = 10.0,
) -> SearchResult:
    """Walks from each feasible start, then from the best plan while that pays; the best plan.

    `max_steps` bounds the steps of all walks together; each walk takes `walk_steps`
    (fewer when `max_steps` is smaller than one walk per start).
    """
    t0 = time.monotonic()
    clock = _Clock(time_budget)
    scored: list[tuple[float, int, Assignment]] = []
    for i, start in enumerate(starts):
        secs = ev.seconds(start)
        if secs is not None and all(start != other for _, _, other in scored):
            scored.append((secs, i, start))
    if not scored:
        raise ValueError("no starting plan fits in memory")
    scored.sort(key=lambda x: (x[0], x[1]))
    per_walk = max(1, min(walk_steps, max_steps // len(scored)))
    best_s, _, best = scored[0]
    steps_left, walks, steps_done = max_steps, 0, 0

    def run(start: Assignment, start_s: float) -> bool:
        nonlocal best, best_s, steps_left, walks, steps_done
        rng = random.Random(seed * 1000003 + walks)
        walks += 1
        got, got_s, done = _walk(ev, cands, start, start_s, rng, min(per_walk, steps_left), clock)
        steps_left -= per_walk
        steps_done += done
        if got_s < best_s * (1 - 1e-3):
            best, best_s = got, got_s
            return True
        if got_s < best_s:
            best, best_s = got, got_s
        return False

    for secs, _, start in scored:
        if steps_left <= 0 or clock.out():
            break
        run(start, secs)
    # Walks from the best plan while they keep improving it (by 0.1% or more): stop after
    # `patience` walks in a row that did not.
    idle = 0
    while steps_left > 0 and not clock.out() and idle < patience:
        idle = 0 if run(best, best_s) else idle + 1
    evaluation = ev.evaluate(best)
    assert evaluation is not None
    best, evaluation, polished = polish(ev, cands, best, evaluation, clock)
    return SearchResult(best, evaluation, steps_done + polished, time.monotonic() - t0, walks)


def anneal(
    ev: Evaluator,
    cands: Candidates,
    start: Assignment,
    *,
    seed: int = 0,
    max_steps: int = 4000,
    time_budget: float = 10.0,
) -> SearchResult:
    """One walk from `start` (which must be feasible), then the polish; the best plan seen."""
    return search(
        ev, cands, [start], seed=seed, max_steps=max_steps, walk_steps=max_steps,
        time_budget=time_budget,
    )  # fmt: skip


def polish(
    ev: Evaluator,
    cands: Candidates,
    assign: Assignment,
    current: Evaluation,
    clock: _Clock,
    rounds: int = 4,
) -> tuple[Assignment, Evaluation, int]:
    """Coordinate descent after the walks: each call in turn tries its good layouts on every
    mesh in use and on those meshes' neighbours (parent, sibling, halves); then each pair of
    calls tries swapping meshes. Improvements are kept."""
    tried = 0
    best_s = current.iteration_seconds

    def better(prop: Assignment) -> bool:
        nonlocal tried, best_s
        tried += 1
        got = ev.seconds(prop)
        if got is not None and got < best_s * (1 - 1e-9):
            best_s = got
            return True
        return False

    for _ in range(rounds):
        improved = False
        for call in ev.calls:
            meshes: list[Mesh] = []
            for other in ev.calls:
                mesh = assign[other.name][0]
                for m in (mesh, *cands.neighbours(mesh)):
                    if m not in meshes:
                        meshes.append(m)
            tries = [(mesh, lay) for mesh in meshes for lay in cands.best_on(call, mesh)]
            home = assign[ev.home_call[call.role]]
            at_home = _same_split(ev, call, *home)  # no reallocation
            if at_home is not None:
                tries.append((home[0], at_home))
            for place in tries:
                if clock.out():
                    return _final(ev, assign, tried)
                if place == assign[call.name]:
                    continue
                prop = dict(assign)
                prop[call.name] = place
                if better(prop):
                    assign, improved = prop, True
        for i, a in enumerate(ev.calls):
            for b in ev.calls[i + 1 :]:
                ma, mb = assign[a.name][0], assign[b.name][0]
                if ma == mb or clock.out():
                    continue
                swaps = [
                    (la, lb) for la in cands.best_on(a, mb)[:3] for lb in cands.best_on(b, ma)[:3]
                ]
                for la, lb in swaps:
                    prop = dict(assign)
                    prop[a.name], prop[b.name] = (mb, la), (ma, lb)
                    if better(prop):
                        assign, improved = prop, True
                        break
        if not improved:
            break
    return _final(ev, assign, tried)


def _final(ev: Evaluator, assign: Assignment, tried: int) -> tuple[Assignment, Evaluation, int]:
    got = ev.evaluate(assign)
    assert got is not None
    return assign, got, tried
