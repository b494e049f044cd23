"""Generate the RLHFJob CustomResourceDefinition from the pydantic models.

The models are the single source of truth: pydantic's JSON schema is turned
into a *structural* OpenAPI v3 schema as Kubernetes requires (no $ref, no
anyOf for optional fields, `exclusiveMinimum` as a boolean, free-form objects
marked `x-kubernetes-preserve-unknown-fields`), keeping every description so
`kubectl explain rlhfjob.spec...` is useful, and the CEL rules each model
declares in `x-kubernetes-validations`.
"""

from __future__ import annotations

import copy
from typing import Any

import yaml

from .job import GROUP, KIND, PLURAL, SHORT_NAMES, SINGULAR, VERSION, RLHFJob
from .status import RLHFJobStatus

# JSON-schema keywords Kubernetes accepts in a structural schema and we keep.
_KEEP = {
    "type",
    "description",
    "default",
    "enum",
    "minimum",
    "maximum",
    "minLength",
    "maxLength",
    "pattern",
    "minItems",
    "maxItems",
    "items",
    "properties",
    "required",
    "additionalProperties",
    "format",
    "nullable",
    "x-kubernetes-validations",
    "x-kubernetes-preserve-unknown-fields",
}


def _resolve(schema: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    """Inline $ref and collapse the wrappers pydantic emits for optional and annotated fields."""
    if "$ref" in schema:
        target = copy.deepcopy(defs[schema["$ref"].split("/")[-1]])
        extra = {k: v for k, v in schema.items() if k != "$ref"}
        return _resolve({**target, **extra}, defs)
    if "anyOf" in schema:
        options = [o for o in schema["anyOf"] if o.get("type") != "null"]
        outer = {k: v for k, v in schema.items() if k != "anyOf"}
        if len(options) == 1:  # Optional[X]: "not required" already says it may be absent
            return _resolve({**options[0], **outer}, defs)
        raise ValueError(f"unions are not structural: {schema}")
    if "allOf" in schema and len(schema["allOf"]) == 1:
        outer = {k: v for k, v in schema.items() if k != "allOf"}
        return _resolve({**schema["allOf"][0], **outer}, defs)
    return schema


def _structural(schema: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    schema = _resolve(schema, defs)
    out: dict[str, Any] = {}
    if "const" in schema:
        out["enum"] = [schema["const"]]
        out["type"] = {str: "string", bool: "boolean", int: "integer"}.get(
            type(schema["const"]), "string"
        )
    for key, value in schema.items():
        if key == "properties":
            out["properties"] = {name: _structural(sub, defs) for name, sub in value.items()}
        elif key == "items":
            out["items"] = _structural(value, defs)
        elif key == "additionalProperties":
            out[key] = _structural(value, defs) if isinstance(value, dict) else value
        elif key == "exclusiveMinimum":
            out["minimum"], out["exclusiveMinimum"] = value, True
        elif key == "exclusiveMaximum":
            out["maximum"], out["exclusiveMaximum"] = value, True
        elif key == "default" and value is None:
            continue  # "absent" is the default of an optional field
        elif key in _KEEP:
            out[key] = value
    if out.get("type") == "number" and "enum" not in out:
        # YAML writes 1.0 as 1: let integers through where a number is expected.
        out.setdefault("format", "double")
    if "x-kubernetes-preserve-unknown-fields" in out:
        out["type"] = "object"
    if (
        out.get("type") == "object"
        and "properties" not in out
        and "additionalProperties" not in out
    ):
        out["x-kubernetes-preserve-unknown-fields"] = True
    if out.get("additionalProperties") is False:
        del out["additionalProperties"]  # structural schemas forbid `false`; pruning does the job
    if "description" in out:
        out["description"] = " ".join(out["description"].split())
    return out


def openapi_schema(model: type = RLHFJob) -> dict[str, Any]:
    """The structural OpenAPI v3 schema of a pydantic model, by alias."""
    raw = model.model_json_schema(by_alias=True, mode="validation")  # type: ignore[attr-defined]
    return _structural(raw, raw.get("$defs", {}))


def build_crd() -> dict[str, Any]:
    """The CustomResourceDefinition of RLHFJob."""
    schema = openapi_schema(RLHFJob)
    props = schema["properties"]
    # metadata is validated by the API server itself; declaring more than
    # `type: object` here is not allowed.
    props["metadata"] = {"type": "object"}
    props["apiVersion"] = {
        "type": "string",
        "description": "APIVersion of the object: rlhf.dev/v1alpha1.",
    }
    props["kind"] = {"type": "string", "description": "Kind of the object: RLHFJob."}
    status = openapi_schema(RLHFJobStatus)
    status["x-kubernetes-preserve-unknown-fields"] = True  # kopf keeps handler progress here
    props["status"] = status
    schema["required"] = ["spec"]
    schema["x-kubernetes-validations"] = [
        {
            "rule": "size(self.metadata.name) <= 45",
            "message": "metadata.name must be at most 45 characters (child objects append suffixes)",
        },
    ]
    schema.pop("description", None)
    schema["description"] = RLHFJob.__doc__.strip() if RLHFJob.__doc__ else ""
    columns = [
        {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
        {"name": "Iteration", "type": "integer", "jsonPath": ".status.iteration"},
        {"name": "Algorithm", "type": "string", "jsonPath": ".spec.algorithm.name"},
        {"name": "GPUs", "type": "integer", "jsonPath": ".spec.resources.gpus"},
        {
            "name": "Reward",
            "type": "number",
            "jsonPath": ".status.metrics.rewardMean",
            "priority": 1,
        },
        {"name": "Restarts", "type": "integer", "jsonPath": ".status.restarts", "priority": 1},
        {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
    ]
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{PLURAL}.{GROUP}"},
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": KIND,
                "plural": PLURAL,
                "singular": SINGULAR,
                "shortNames": SHORT_NAMES,
                "listKind": f"{KIND}List",
            },
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": columns,
                    "schema": {"openAPIV3Schema": schema},
                }
            ],
        },
    }


def crd_yaml() -> str:
    """The CRD as the YAML checked in under crds/."""
    header = "# Generated by `rlhfctl crd` from rlhf_operator.api; do not edit.\n"
    return header + yaml.safe_dump(build_crd(), sort_keys=False, width=100)
