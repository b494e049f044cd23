"""One iteration of a plan as an ordered list of steps with prerequisites. Pure.

The plan says where each call runs and how its role is split there; this
module turns that into what the coordinator dispatches each iteration:

* `Realloc`: before a call whose layout differs from where the role's
  parameters are, copy them into the call's layout. As in ReaL, a role's *home*
  layout owns the parameters (for a trained role: its train call's layout,
  which also owns the optimizer); every other layout is a transient copy made
  by reallocation before its first call and dropped (`Release`) after its last
  one in the iteration. Nothing is copied back: transient copies are not trained.
* `MoveData`: a call's inputs produced by another call on another layout are
  redistributed worker to worker (never through the coordinator). Train calls
  and sequence-level keys (rewards) always get every row on every rank.
* `RunCall`: the call itself.
* `Release`: drop a transient copy after its last call.
* `Restore` / `Offload`: a frozen role the plan keeps in host memory
  (`plan.offloads`) is brought back onto its home devices before its first use
  in the iteration (its call, or the reallocation that copies it elsewhere) and
  sent back to host memory after its last use (after the release of any
  transient copy, which may share the home copy's tensors).
* `EndIteration`: every rank drops the iteration's data (iterations run one
  after another, so this is the one place data is freed).

Every step lists the steps it must wait for (`after`). The executor dispatches
steps one at a time in a single global order, each once its prerequisites are
done; workers run their commands in arrival order. Every rank therefore sees
the collectives it takes part in in the same order (no deadlock), while steps
on disjoint ranks still overlap.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from rlhf_operator.api.dataflow import SEQUENCE_KEYS, Call
from rlhf_operator.contract.plan import Plan, call_layout, home_layouts
from rlhf_operator.contract.sharding import Layout


@dataclass(frozen=True)
class Realloc:
    role: str
    src: Layout
    dst: Layout
    for_call: str


@dataclass(frozen=True)
class MoveData:
    key: str
    src_call: str
    dst_call: str
    src: Layout
    dst: Layout


@dataclass(frozen=True)
class RunCall:
    call: str
    role: str
    layout: Layout


@dataclass(frozen=True)
class Release:
    role: str
    layout: Layout


@dataclass(frozen=True)
class Restore:
    role: str
    layout: Layout  # the role's home


@dataclass(frozen=True)
class Offload:
    role: str
    layout: Layout  # the role's home


@dataclass(frozen=True)
class EndIteration:
    ranks: tuple[int, ...]


Action = Realloc | MoveData | RunCall | Release | Restore | Offload | EndIteration


@dataclass(frozen=True)
class Step:
    index: int
    action: Action
    after: tuple[int, ...]

    @property
    def ranks(self) -> tuple[int, ...]:
        """The global ranks that take part (the command goes to each of them)."""
        a = self.action
        if isinstance(a, Realloc | MoveData):
            return tuple(sorted(set(a.src.ranks) | set(a.dst.ranks)))
        if isinstance(a, RunCall | Release | Restore | Offload):
            return tuple(sorted(a.layout.ranks))
        return a.ranks


def iteration_steps(plan: Plan, calls: Sequence[Call]) -> list[Step]:
    """The steps of one iteration, in a dispatch order that respects every dependency."""
    by_name = {c.name: c for c in plan.calls}
    missing = [c.name for c in calls if c.name not in by_name]
    if missing:
        raise ValueError(f"the plan has no placement for call(s): {', '.join(missing)}")
    layouts = {c.name: call_layout(by_name[c.name], plan.gpus_per_node) for c in calls}
    homes = home_layouts(plan, calls)
    producer = {key: c.name for c in calls for key in c.outputs}
    order = _topological(calls, producer)

    steps: list[Step] = []
    ran: dict[str, int] = {}  # call name -> its RunCall step
    copies: dict[tuple[str, Layout], int] = {}  # transient copy -> the Realloc step that made it
    # A transient copy is released right after its last call, before anything
    # else runs on those ranks (training must not share memory with it).
    last_user = {
        (c.role, layouts[c.name]): c.name for c in order if layouts[c.name] != homes[c.role]
    }
    copy_users: dict[tuple[str, Layout], set[int]] = {}
    offloaded = {o.role for o in plan.offloads}
    last_call = {c.role: c.name for c in order}
    restored: dict[str, int] = {}  # offloaded role -> its Restore step
    role_steps: dict[str, set[int]] = {}  # offloaded role -> the steps that use it

    def add(action: Action, after: set[int]) -> int:
        index = len(steps)
        steps.append(Step(index, action, tuple(sorted(after))))
        return index

    for call in order:
        layout = layouts[call.name]
        needs: set[int] = set()
        home = homes[call.role]
        if call.role in offloaded and call.role not in restored:
            restored[call.role] = add(Restore(call.role, home), set())
            role_steps[call.role] = set()
        # Steps that read the home copy wait for it to be back on the devices.
        restore = {restored[call.role]} if call.role in restored else set()
        uses = role_steps.get(call.role, set())
        if layout != home:
            copy_key = (call.role, layout)
            if copy_key not in copies:
                # The home copy must be current: after the role's last train call, if any ran.
                trained = {
                    ran[c.name]
                    for c in order
                    if c.role == call.role and c.kind == "train" and c.name in ran
                }
                copies[copy_key] = add(
                    Realloc(call.role, home, layout, call.name), trained | restore
                )
                uses.add(copies[copy_key])
            needs.add(copies[copy_key])
        for key in call.inputs:
            source = producer.get(key)
            if source is None:
                continue  # prompts: read by the generating workers themselves
            needs.add(ran[source])
            # Train calls compute advantages over the whole batch, so every rank
            # gets all rows of every input even when the layouts agree.
            if layouts[source] != layout or key in SEQUENCE_KEYS or call.kind == "train":
                move = add(MoveData(key, source, call.name, layouts[source], layout), {ran[source]})
                needs.add(move)
        if layout == home:
            needs |= restore
        index = add(RunCall(call.name, call.role, layout), needs)
        ran[call.name] = index
        uses.add(index)
        if layout != home:
            copy_users.setdefault((call.role, layout), set()).add(index)
            if last_user[(call.role, layout)] == call.name:
                uses.add(add(Release(call.role, layout), copy_users[(call.role, layout)]))
        if call.role in restored and last_call[call.role] == call.name:
            add(Offload(call.role, home), uses)

    everyone = tuple(sorted({r for layout in layouts.values() for r in layout.ranks}))
    add(EndIteration(everyone), {s.index for s in steps})
    return steps


def _topological(calls: Sequence[Call], producer: dict[str, str]) -> list[Call]:
    """Calls in dependency order, keeping the algorithm's listed order among independent ones."""
    done: set[str] = set()
    order: list[Call] = []
    pending = list(calls)
    while pending:
        for call in pending:
            deps = {producer[k] for k in call.inputs if k in producer}
            if deps <= done:
                order.append(call)
                done.add(call.name)
                pending.remove(call)
                break
        else:
            raise ValueError(
                f"the calls' data dependencies form a cycle: {[c.name for c in pending]}"
            )
    return order
