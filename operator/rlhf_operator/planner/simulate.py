"""Iteration time and memory feasibility of a whole assignment of calls to placements.

Each role has a *home* placement holding its persistent copy: the training
call's for trained roles (parameters, gradients and optimizer states live
there), the first call's for frozen ones. A call placed elsewhere (another mesh
or another dp/tp/pp) first receives a transient copy by reallocation from the
home layout, freed after the call (nothing is copied back). Frozen roles may be
offloaded to host memory when the devices are full: each of their calls then
reloads its shard first.

Memory: devices are grouped into the elementary ranges cut by the meshes'
boundaries; on each, the persistent copies whose home mesh covers it, plus the
largest transient need (activations, KV cache, transient weights) of the calls
covering it, must fit in the profile's usable memory.

Time: the calls are list-scheduled in the algorithm's order: a task (a call,
a reallocation, a reload) starts when its inputs are ready and every device of
its mesh(es) is free; a reallocation occupies both meshes. Iterations run one
after another, as the coordinator runs them (its `EndIteration` step waits for
every step of the iteration, critic training included), so the iteration time
is the makespan of one iteration. With `overlap_iterations` the DAG is instead
unrolled over `unroll` iterations, a trained role's next-iteration calls wait
only for its own training call (critic training may then run under the next
generation), and the iteration time is the steady-state spacing of iteration
ends: what a coordinator without the barrier could reach.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..api.dataflow import Call
from ..contract.sharding import Layout
from .cluster import Cluster, Mesh
from .estimator import CallCost, Strategy, call_cost, offload_seconds
from .reallocation import TransferCost, transfer
from .workload import Workload

Placement = tuple[Mesh, Strategy]
Assignment = dict[str, Placement]
# Where a role's parameters sit under a placement: its mesh and (dp, tp, pp); micro-batches
# and recomputation do not change which rank holds what.
Sharding = tuple[Mesh, int, int, int]


@dataclass
class Evaluation:
    iteration_seconds: float
    costs: dict[str, CallCost]
    memory: dict[str, float]  # per call: peak bytes on a device of its mesh during the call
    reallocations: list[tuple[str, str, str, TransferCost]] = field(default_factory=list)
    offloads: list[tuple[str, str, float, float]] = field(
        default_factory=list
    )  # role, call, bytes, s
    offloaded: tuple[str, ...] = ()
    # The last simulated iteration's tasks: (what, start, end) in seconds from its start;
    # what is a call's name, "realloc:<call>" or "reload:<call>".
    timeline: list[tuple[str, float, float]] = field(default_factory=list)


def _key(p: Placement) -> Sharding:
    mesh, lay = p
    return mesh, lay.dp, lay.tp, lay.pp


class Evaluator:
    def __init__(
        self,
        workload: Workload,
        cluster: Cluster,
        unroll: int = 3,
        overlap_iterations: bool = False,
    ) -> None:
        self.w = workload
        self.c = cluster
        self.overlap_iterations = overlap_iterations
        self.unroll = max(2, unroll) if overlap_iterations else 1
        self._costs: dict[tuple[object, ...], CallCost] = {}
        self._transfers: dict[tuple[str, Layout, Layout], TransferCost] = {}
        self._raw_costs: dict[tuple[str, Mesh, Strategy], CallCost] = {}
        self._raw_transfers: dict[tuple[object, ...], TransferCost] = {}
        self.calls = workload.calls
        self.by_name = {c.name: c for c in self.calls}
        self.home_call: dict[str, str] = {}
        for c in self.calls:
            role = workload.roles[c.role]
            if role.trainable and c.kind == "train":
                self.home_call[c.role] = c.name
        for c in self.calls:
            self.home_call.setdefault(c.role, c.name)
        self.evaluations = 0
        self._seconds: dict[tuple[Placement, ...], float | None] = {}

    # --- cached pieces ---------------------------------------------------------
    def cost(self, call: Call, mesh: Mesh, layout: Strategy) -> CallCost:
        raw = (call.name, mesh, layout)
        hit = self._raw_costs.get(raw)
        if hit is not None:
            return hit
        hit = self._cost(call, mesh, layout)
        self._raw_costs[raw] = hit
        return hit

    def _cost(self, call: Call, mesh: Mesh, layout: Strategy) -> CallCost:
        multi = self.c.nodes_of(mesh) > 1
        key = (
            call.name,
            mesh.size,
            multi and layout.dp * layout.tp > self.c.per_node,
            multi and layout.dp * layout.tp >= self.c.per_node,
            layout,
        )
        got = self._costs.get(key)
        if got is None:
            got = call_cost(self.w, call, self.c, mesh, layout)
            self._costs[key] = got
        return got

    def transfer(self, role: str, src: Placement, dst: Placement) -> TransferCost:
        raw = (
            role,
            src[0],
            src[1].dp,
            src[1].tp,
            src[1].pp,
            dst[0],
            dst[1].dp,
            dst[1].tp,
            dst[1].pp,
        )
        hit = self._raw_transfers.get(raw)
        if hit is None:
            hit = self._transfer(role, src, dst)
            self._raw_transfers[raw] = hit
        return hit

    def _transfer(self, role: str, src: Placement, dst: Placement) -> TransferCost:
        a, b = src[0], dst[0]
        # Only the relative position matters: shift both by whole nodes.
        shift = min(a.start, b.start) // self.c.per_node * self.c.per_node
        if shift:
            a, b = Mesh(a.start - shift, a.size), Mesh(b.start - shift, b.size)
        if not a.overlaps(b):
            # Disjoint meshes: only which one comes first and whether they share a node matter.
            gap = b.start - a.stop if a.start < b.start else a.start - b.stop
            if gap >= self.c.per_node:
                nodes = gap // self.c.per_node
                if a.start > b.start:
                    a = Mesh(a.start - nodes * self.c.per_node, a.size)
                else:
                    b = Mesh(b.start - nodes * self.c.per_node, b.size)
        (_, s), (_, d) = src, dst
        key = (role, a.layout(s.dp, s.tp, s.pp), b.layout(d.dp, d.tp, d.pp))
        got = self._transfers.get(key)
        if got is None:
            got = transfer(self.w.roles[role], key[1], key[2], self.c)
            self._transfers[key] = got
        return got

    # --- the whole plan -----------------------------------------------------------
    def seconds(self, assign: Assignment) -> float | None:
        """The iteration seconds of an assignment (None: does not fit), remembered: a search
        proposes the same plans again and again."""
        key = tuple(assign[c.name] for c in self.calls)
        if key in self._seconds:
            return self._seconds[key]
        got = self.evaluate(assign)
        secs = got.iteration_seconds if got is not None else None
        self._seconds[key] = secs
        return secs

    def evaluate(self, assign: Assignment) -> Evaluation | None:
        """Estimate an assignment; None when it does not fit in memory even with offloading."""
        self.evaluations += 1
        w, calls = self.w, self.calls
        costs = {c.name: self.cost(c, *assign[c.name]) for c in calls}
        # Elementary device ranges.
        cuts = sorted({m.start for m, _ in assign.values()} | {m.stop for m, _ in assign.values()})
        index = {x: i for i, x in enumerate(cuts)}
        spans = {
            c.name: range(index[assign[c.name][0].start], index[assign[c.name][0].stop])
            for c in calls
        }
        n_iv = len(cuts) - 1
        usable = self.c.profile.usable_memory

        # Which calls need a transfer from their role's home.
        needs_copy: dict[str, bool] = {}
        for c in calls:
            home = self.home_call[c.role]
            needs_copy[c.name] = (
                c.name != home
                and (_key(assign[c.name]) != _key(assign[home]))
                and self.transfer(c.role, assign[home], assign[c.name]).total_bytes > 0
            )

        # With in-place resharding a trained role's generation copy stays on the devices
        # it shares with the role's home: there it is resident rather than made for the
        # call. Counted beside the home weights, though on a device whose home shard
        # fits inside it the two are one (where it does not, the runtime still makes
        # and frees a copy for the call: this bound covers both).
        housed = {
            c.name: set(spans[c.name]) & set(spans[self.home_call[c.role]])
            for c in calls
            if w.in_place_resharding
            and c.kind == "generate"
            and w.roles[c.role].trainable
            and needs_copy[c.name]
        }

        def housed_bytes(name: str, interval: int) -> float:
            """A housed copy's weights on an interval: resident there, not the call's."""
            return costs[name].weight_bytes if interval in housed.get(name, ()) else 0.0

        frozen = sorted(
            {c.role for c in calls if not w.roles[c.role].trainable and w.roles[c.role].arch},
            key=lambda r: -costs[self.home_call[r]].weight_bytes,
        )
        offloaded: list[str] = []
        while True:
            static = [0.0] * n_iv
            for role, home in self.home_call.items():
                if role in offloaded:
                    continue
                cc = costs[home]
                need = cc.weight_bytes + cc.state_bytes
                if need:
                    for i in spans[home]:
                        static[i] += need
            for name, shared in housed.items():
                for i in shared:
                    static[i] += costs[name].weight_bytes
            active = [0.0] * n_iv
            call_active: dict[str, float] = {}
            for c in calls:
                cc = costs[c.name]
                extra = cc.active_bytes
                if needs_copy[c.name] or c.role in offloaded:
                    extra += cc.weight_bytes
                call_active[c.name] = extra
                for i in spans[c.name]:
                    active[i] = max(active[i], extra - housed_bytes(c.name, i))
            if all(static[i] + active[i] <= usable for i in range(n_iv)):
                break
            if len(offloaded) == len(frozen):
                return None
            offloaded.append(frozen[len(offloaded)])

        memory = {
            c.name: max(
                static[i] + call_active[c.name] - housed_bytes(c.name, i) for i in spans[c.name]
            )
            for c in calls
        }

        # --- list scheduling over `unroll` iterations ---
        free = [0.0] * n_iv
        train_of = {c.role: c.name for c in calls if c.kind == "train"}
        ends: list[dict[str, float]] = []
        iteration_end: list[float] = []
        reallocs: list[tuple[str, str, str, TransferCost]] = []
        offloads: list[tuple[str, str, float, float]] = []
        tasks: list[tuple[str, float, float]] = []
        for k in range(self.unroll):
            end: dict[str, float] = {}
            last = 0.0
            tasks = []
            for c in calls:
                ready = max((end[d] for d in w.deps[c.name]), default=0.0)
                weights_ready = 0.0
                if k > 0 and c.role in train_of:
                    weights_ready = ends[k - 1][train_of[c.role]]
                if c.kind == "train":
                    for other in calls:
                        if other.role == c.role and other.name in end:
                            ready = max(ready, end[other.name])
                pre_end = weights_ready
                if needs_copy[c.name]:
                    home = self.home_call[c.role]
                    t = self.transfer(c.role, assign[home], assign[c.name])
                    occ = set(spans[home]) | set(spans[c.name])
                    start = max([weights_ready, *(free[i] for i in occ)])
                    pre_end = start + t.seconds
                    for i in occ:
                        free[i] = pre_end
                    if k == 0:
                        reallocs.append((c.role, home, c.name, t))
                    tasks.append((f"realloc:{c.name}", start, pre_end))
                elif c.role in offloaded:
                    secs = offload_seconds(costs[c.name].weight_bytes, self.c.profile)
                    start = max([weights_ready, *(free[i] for i in spans[c.name])])
                    pre_end = start + secs
                    for i in spans[c.name]:
                        free[i] = pre_end
                    if k == 0:
                        offloads.append((c.role, c.name, costs[c.name].weight_bytes, secs))
                    tasks.append((f"reload:{c.name}", start, pre_end))
                start = max([ready, pre_end, *(free[i] for i in spans[c.name])])
                finish = start + costs[c.name].seconds
                for i in spans[c.name]:
                    free[i] = finish
                end[c.name] = finish
                tasks.append((c.name, start, finish))
                last = max(last, finish)
            ends.append(end)
            iteration_end.append(last)
        if self.unroll == 1:
            seconds = iteration_end[0]
        else:
            seconds = (iteration_end[-1] - iteration_end[0]) / (self.unroll - 1)
            origin = iteration_end[-2]
            tasks = [(what, a - origin, b - origin) for what, a, b in tasks]
        return Evaluation(
            seconds, costs, memory, reallocs, offloads, tuple(offloaded), timeline=tasks
        )
