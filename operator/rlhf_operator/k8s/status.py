"""The operator's part of an RLHFJob's status: phase, conditions (the shape of
metav1.Condition), restarts, plan summary, times. Pure functions over dicts.

The coordinator writes the progress fields (iteration, metrics, lastCheckpoint)
with its own merge patches; the operator only ever writes the keys listed in
OPERATOR_FIELDS, so the two never overwrite each other.
"""

from __future__ import annotations

import copy
import datetime
from typing import Any

from ..contract.plan import Plan

TERMINAL = ("Succeeded", "Failed")
OPERATOR_FIELDS = (
    "phase",
    "conditions",
    "observedGeneration",
    "attempt",
    "podGroup",
    "restarts",
    "disruptions",
    "plan",
    "gpus",
    "startTime",
    "completionTime",
)


def now_utc() -> datetime.datetime:
    return datetime.datetime.now(tz=datetime.UTC)


def iso(t: datetime.datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(text: str | None) -> datetime.datetime | None:
    if not text:
        return None
    try:
        return datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None


def condition(status: dict[str, Any], type_: str) -> dict[str, Any] | None:
    for c in status.get("conditions") or []:
        if c.get("type") == type_:
            return dict(c)
    return None


def is_true(status: dict[str, Any], type_: str) -> bool:
    c = condition(status, type_)
    return bool(c and c.get("status") == "True")


class StatusUpdate:
    """The status the operator wants, built from the current one; `patch()` is
    the merge patch to send (None when nothing changed: no API call)."""

    def __init__(self, current: dict[str, Any] | None, generation: int, now: datetime.datetime):
        self.before = copy.deepcopy(current or {})
        self.after = copy.deepcopy(current or {})
        self.generation = generation
        self.now = now
        self.changed_conditions: list[str] = []

    @property
    def phase(self) -> str | None:
        return self.after.get("phase")

    def set(self, key: str, value: Any) -> None:
        self.after[key] = value

    def set_condition(self, type_: str, status: str, reason: str, message: str = "") -> bool:
        """Set one condition; its lastTransitionTime moves only when status flips.
        Returns True when status or reason changed (worth an event)."""
        conditions = [dict(c) for c in self.after.get("conditions") or []]
        old = next((c for c in conditions if c.get("type") == type_), None)
        new = {
            "type": type_,
            "status": status,
            "reason": reason,
            "message": message,
            "lastTransitionTime": iso(self.now),
            "observedGeneration": self.generation,
        }
        if old is not None and old.get("status") == status:
            new["lastTransitionTime"] = old.get("lastTransitionTime", new["lastTransitionTime"])
        if old is None:
            conditions.append(new)
        else:
            conditions[conditions.index(old)] = new
        self.after["conditions"] = conditions
        flipped = old is None or old.get("status") != status or old.get("reason") != reason
        if flipped:
            self.changed_conditions.append(type_)
        return flipped

    def set_phase(self, phase: str) -> None:
        self.after["phase"] = phase
        if phase in TERMINAL and not self.after.get("completionTime"):
            self.after["completionTime"] = iso(self.now)

    def patch(self) -> dict[str, Any] | None:
        self.after["observedGeneration"] = self.generation
        diff = {
            k: self.after.get(k) for k in OPERATOR_FIELDS if self.after.get(k) != self.before.get(k)
        }
        return {"status": diff} if diff else None


def host_bytes_per_device(plan: Plan) -> int:
    """Host memory a device's worker keeps for the plan: each offloaded role's largest
    share of one device (its copy in host memory between the calls that use it)."""
    per_role: dict[str, int] = {}
    for o in plan.offloads:
        per_role[o.role] = max(per_role.get(o.role, 0), int(o.bytes))
    return sum(per_role.values())


def plan_summary(plan: Plan, config_map: str) -> dict[str, Any]:
    """status.plan: the strategy, estimates and each call's placement."""
    return {
        "strategy": plan.strategy,
        "configMap": config_map,
        "iterationSeconds": round(plan.iteration_seconds, 6),
        "tokensPerSecond": round(plan.tokens_per_second, 3),
        "hostBytesPerDevice": host_bytes_per_device(plan),
        "calls": [
            {
                "name": c.name,
                "mesh": c.mesh_spec,
                "dp": c.dp,
                "tp": c.tp,
                "pp": c.pp,
                "seconds": round(c.seconds, 6),
            }
            for c in plan.calls
        ],
    }
