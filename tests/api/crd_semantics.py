"""What the API server does with the CRD, for tests: defaulting, the OpenAPI
schema check and the CEL rules (evaluated by cel-python, a real CEL engine).

The kmock emulator does not validate anything, so tests that need to know what
a real API server would accept use this instead.
"""

from __future__ import annotations

import copy
from functools import cache
from typing import Any

import celpy
from openapi_schema_validator import OAS30Validator

from rlhf_operator.api.crd import build_crd


@cache
def crd_schema() -> dict[str, Any]:
    schema: dict[str, Any] = build_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return schema


def apply_defaults(schema: dict[str, Any], obj: Any) -> Any:
    """Fill in schema defaults the way the API server does (for fields absent in present objects)."""
    if isinstance(obj, dict) and "properties" in schema:
        out = dict(obj)
        for name, sub in schema["properties"].items():
            if name not in out and "default" in sub:
                out[name] = copy.deepcopy(sub["default"])
            if name in out:
                out[name] = apply_defaults(sub, out[name])
        return out
    if isinstance(obj, dict) and isinstance(schema.get("additionalProperties"), dict):
        return {k: apply_defaults(schema["additionalProperties"], v) for k, v in obj.items()}
    if isinstance(obj, list) and "items" in schema:
        return [apply_defaults(schema["items"], v) for v in obj]
    return obj


def schema_errors(manifest: dict[str, Any]) -> list[str]:
    """OpenAPI v3 schema violations (types, enums, bounds, patterns, required)."""
    validator = OAS30Validator(crd_schema())
    return [
        f"{'.'.join(str(p) for p in e.absolute_path)}: {e.message}"
        for e in validator.iter_errors(manifest)
    ]


_ENV = celpy.Environment()


@cache
def _program(rule: str) -> Any:
    return _ENV.program(_ENV.compile(rule))


def cel_violations(manifest: dict[str, Any], old: dict[str, Any] | None = None) -> list[str]:
    """Messages of the CRD's x-kubernetes-validations rules that the (defaulted) manifest
    breaks; with `old`, an update from that object: transition rules (those reading
    oldSelf) run too, where the old object has the value, as the API server runs them."""
    out: list[str] = []
    previous = apply_defaults(crd_schema(), old) if old is not None else _ABSENT
    _walk(crd_schema(), apply_defaults(crd_schema(), manifest), previous, "", out)
    return out


_ABSENT = object()


def _walk(schema: dict[str, Any], obj: Any, old: Any, path: str, out: list[str]) -> None:
    for rule in schema.get("x-kubernetes-validations", []):
        activation = {"self": celpy.json_to_cel(obj)}
        if "oldSelf" in rule["rule"]:
            if old is _ABSENT:
                continue  # a create, or the value is new: transition rules do not run
            activation["oldSelf"] = celpy.json_to_cel(old)
        result = _program(rule["rule"]).evaluate(activation)
        # Only a real `true` passes: an evaluation error (a missing field, say)
        # fails the rule, as it does in the API server.
        if not (isinstance(result, celpy.celtypes.BoolType) and bool(result)):
            out.append(f"{path or '<root>'}: {rule['message']}")
    if isinstance(obj, dict):
        before = old if isinstance(old, dict) else {}
        for name, sub in schema.get("properties", {}).items():
            if name in obj:
                child = f"{path}.{name}" if path else name
                _walk(sub, obj[name], before.get(name, _ABSENT), child, out)
        extra = schema.get("additionalProperties")
        if isinstance(extra, dict):
            for key, value in obj.items():
                _walk(extra, value, before.get(key, _ABSENT), f"{path}.{key}", out)
    elif isinstance(obj, list) and "items" in schema:
        # List items are matched by position only for these tests (no listType=map here).
        for i, value in enumerate(obj):
            prior = old[i] if isinstance(old, list) and i < len(old) else _ABSENT
            _walk(schema["items"], value, prior, f"{path}[{i}]", out)
