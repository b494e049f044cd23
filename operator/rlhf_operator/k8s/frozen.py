"""A job's spec after it was planned: what may change, and what the operator refuses.

The CRD's transition rules (`api.spec.immutable_rules`) refuse an edit of a running
job's spec at the API server. A cluster with an older CRD lets it through; then
the operator refuses it itself: it keeps running the spec the job was planned with
(the ConfigMap's job.yaml, which the coordinator runs), takes from the new spec only
the fields meant to change (`api.spec.MUTABLE_FIELDS`), says so in the condition
SpecAccepted (False, ImmutableFieldChanged, naming the fields), and does not advance
observedGeneration. Undoing the edit clears the condition. Pure.
"""

from __future__ import annotations

import copy
from typing import Any

import yaml

from ..api.spec import IMMUTABLE_SPEC_FIELDS, MUTABLE_FIELDS

IMMUTABLE_PATHS = IMMUTABLE_SPEC_FIELDS


def _get(spec: dict[str, Any], path: str) -> Any:
    node: Any = spec
    for part in path.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def _set(spec: dict[str, Any], path: str, value: Any) -> None:
    *parents, last = path.split(".")
    node = spec
    for part in parents:
        node = node.setdefault(part, {})
    if value is None:
        node.pop(last, None)
    else:
        node[last] = copy.deepcopy(value)


def changed_fields(planned: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """The immutable fields (`spec.` paths) on which two validated specs (camelCase,
    defaults filled in: `to_manifest()`) differ."""
    return [f"spec.{p}" for p in IMMUTABLE_PATHS if _get(planned, p) != _get(current, p)]


def effective_spec(planned: dict[str, Any], current: dict[str, Any]) -> dict[str, Any]:
    """The planned spec with the fields meant to change taken from the current one."""
    out = copy.deepcopy(planned)
    for path in MUTABLE_FIELDS:
        _set(out, path, _get(current, path))
    return out


def planned_manifest(config_map: dict[str, Any] | None, key: str) -> dict[str, Any] | None:
    """The job manifest the plan was made for, from the job's ConfigMap (None if absent)."""
    text = ((config_map or {}).get("data") or {}).get(key)
    if not text:
        return None
    doc = yaml.safe_load(text)
    return doc if isinstance(doc, dict) else None
