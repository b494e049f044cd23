"""The CRD is generated from the models, structural, documented, and agrees with them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from rlhf_operator.api.crd import build_crd, crd_yaml

from .crd_semantics import cel_violations, crd_schema, schema_errors

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((ROOT / "examples").glob("*.yaml"))


def test_checked_in_crd_is_up_to_date() -> None:
    checked_in = (ROOT / "crds" / "rlhf.dev_rlhfjobs.yaml").read_text()
    assert checked_in == crd_yaml(), "crds/ is stale: run `make crd`"


def _nodes(schema: dict[str, Any], path: str = ""):  # type: ignore[no-untyped-def]
    yield path, schema
    for name, sub in schema.get("properties", {}).items():
        yield from _nodes(sub, f"{path}.{name}")
    if isinstance(schema.get("items"), dict):
        yield from _nodes(schema["items"], f"{path}[]")
    if isinstance(schema.get("additionalProperties"), dict):
        yield from _nodes(schema["additionalProperties"], f"{path}{{}}")


def test_schema_is_structural() -> None:
    for path, node in _nodes(crd_schema()):
        for forbidden in ("$ref", "anyOf", "oneOf", "allOf", "$defs", "title", "const"):
            assert forbidden not in node, f"{path}: {forbidden} is not structural"
        assert "type" in node, f"{path}: every node needs a type"
        if node.get("default", 0) is None:
            pytest.fail(f"{path}: null default")
        if node["type"] == "object" and "properties" not in node and path != ".metadata":
            assert node.get("additionalProperties") or node.get(
                "x-kubernetes-preserve-unknown-fields"
            ), f"{path}: object without properties must say what it holds"


def test_every_spec_field_is_described() -> None:
    spec = crd_schema()["properties"]["spec"]
    undocumented = [p for p, node in _nodes(spec, "spec") if not node.get("description")]
    # Scalar items of lists/maps (e.g. betas[]) are described by their parent.
    undocumented = [p for p in undocumented if not p.endswith(("[]", "{}"))]
    assert undocumented == []


def test_crd_names_columns_and_subresources() -> None:
    crd = build_crd()
    assert crd["metadata"]["name"] == "rlhfjobs.rlhf.dev"
    assert crd["spec"]["scope"] == "Namespaced"
    version = crd["spec"]["versions"][0]
    assert version["name"] == "v1alpha1" and version["subresources"] == {"status": {}}
    columns = {c["name"] for c in version["additionalPrinterColumns"]}
    assert {"Phase", "Iteration", "GPUs", "Age"} <= columns


def test_schema_carries_defaults_enums_bounds_and_cel() -> None:
    spec = crd_schema()["properties"]["spec"]["properties"]
    rollout = spec["rollout"]["properties"]
    assert rollout["backend"]["enum"] == ["torch", "vllm"]
    assert rollout["backend"]["default"] == "torch"
    assert rollout["topP"]["minimum"] == 0 and rollout["topP"]["exclusiveMinimum"] is True
    rules = [r["rule"] for r in spec["resources"]["x-kubernetes-validations"]]
    assert any("gpusPerNode" in r for r in rules)
    rules = [r["rule"] for r in spec["placement"]["x-kubernetes-validations"]]
    assert any("manual" in r for r in rules)


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_crd_accepts_every_example(path: Path) -> None:
    for manifest in yaml.safe_load_all(path.read_text()):
        assert schema_errors(manifest) == []
        assert cel_violations(manifest) == []
