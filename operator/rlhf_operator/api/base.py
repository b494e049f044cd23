"""The base class of every API model.

Kubernetes manifests use camelCase; Python code uses snake_case. Each field is
declared once in snake_case and gets its camelCase alias from here, so the CRD
schema, the YAML users write and the Python attribute names never drift apart.
Unknown fields are errors: a misspelt key in a job file must not be ignored
silently (the API server prunes unknown fields; ``rlhfctl validate`` names them).
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict
from pydantic.alias_generators import to_camel


class ApiModel(BaseModel):
    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        frozen=False,
        validate_default=True,
        use_attribute_docstrings=True,
    )

    def to_manifest(self) -> dict[str, Any]:
        """The model as the camelCase dict a manifest would hold."""
        return self.model_dump(by_alias=True, exclude_none=True, mode="json")


def cel_rules(*rules: tuple[str, str] | tuple[str, str, str]) -> dict[str, Any]:
    """``json_schema_extra`` carrying Kubernetes CEL validation rules.

    Each rule is ``(expression, message)`` or ``(expression, message, fieldPath)``.
    The API server enforces them; ``api.checks`` enforces the same invariants
    in Python (a test runs both over the invalid-manifest corpus so they agree).
    """
    out = []
    for rule in rules:
        entry = {"rule": rule[0], "message": rule[1]}
        if len(rule) == 3:
            entry["fieldPath"] = rule[2]
        out.append(entry)
    return {"x-kubernetes-validations": out}
