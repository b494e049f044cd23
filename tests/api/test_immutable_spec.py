"""A running job's spec is immutable but for the fields meant to change: the CRD's CEL
transition rules, run by a real CEL engine on (old, new) pairs as the API server runs them."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from rlhf_operator.api.spec import IMMUTABLE_SPEC_FIELDS, MUTABLE_FIELDS, RLHFJobSpec, RunPolicy

from .crd_semantics import cel_violations

ROOT = Path(__file__).resolve().parents[2]
OLD = yaml.safe_load((ROOT / "examples" / "llama7b-ppo-8gpu.yaml").read_text())


def edited(change: dict[str, Any], base: dict[str, Any] = OLD) -> dict[str, Any]:
    new = copy.deepcopy(base)
    for path, value in change.items():
        *parents, last = path.split(".")
        node = new["spec"]
        for p in parents:
            node = node.setdefault(p, {})
        if value is None:
            node.pop(last, None)
        else:
            node[last] = value
    return new


def test_the_rules_decide_every_field_of_the_spec() -> None:
    spec_fields = {f.alias for f in RLHFJobSpec.model_fields.values()}
    policy = {f"runPolicy.{f.alias}" for f in RunPolicy.model_fields.values()}
    decided = set(IMMUTABLE_SPEC_FIELDS) | set(MUTABLE_FIELDS)
    assert decided == (spec_fields - {"runPolicy"}) | policy


@pytest.mark.parametrize(
    "change",
    [
        {"suspend": True},
        {"runPolicy.activeDeadlineSeconds": 3600},
        {"runPolicy.ttlSecondsAfterFinished": 60},
        {"runPolicy.backoffLimit": 10},
    ],
)
def test_the_fields_meant_to_change_may(change: dict[str, Any]) -> None:
    assert cel_violations(edited(change), old=OLD) == []


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"training.iterations": 999}, "spec.training"),
        ({"resources.gpus": 16}, "spec.resources"),
        ({"models.actor.dtype": "float32"}, "spec.models"),
        ({"algorithm.name": "grpo"}, "spec.algorithm"),
        ({"rollout.maxNewTokens": 17}, "spec.rollout"),
        ({"placement": {"strategy": "colocated"}}, "spec.placement"),
        ({"export": {"path": "/elsewhere"}}, "spec.export"),
        ({"runPolicy.scheduling": {"queue": "other"}}, "spec.runPolicy.scheduling"),
    ],
)
def test_every_other_field_is_refused_naming_it(change: dict[str, Any], field: str) -> None:
    messages = cel_violations(edited(change), old=OLD)
    assert any(f"{field} cannot change once the job exists" in m for m in messages), messages


def test_adding_or_removing_an_optional_field_is_a_change_too() -> None:
    with_export = edited({"export": {"path": "/out"}})
    assert cel_violations(edited({"export": None}, with_export), old=with_export)
    assert cel_violations(with_export, old=edited({"export": None}, with_export))
    # runPolicy itself is optional: its scheduling may not come or go with it (as
    # `kubectl apply` removes a runPolicy the new manifest leaves out).
    queued = edited({"runPolicy": {"scheduling": {"queue": "team-a"}}})
    without_policy = edited({"runPolicy": None}, queued)
    messages = cel_violations(without_policy, old=queued)
    assert any("spec.runPolicy.scheduling cannot change" in m for m in messages), messages
    assert cel_violations(queued, old=without_policy)
    bare = edited({"runPolicy": None}, edited({"runPolicy": {"backoffLimit": 1}}))
    assert cel_violations(edited({"runPolicy": {"backoffLimit": 5}}), old=bare) == []


def test_a_create_runs_no_transition_rule() -> None:
    assert cel_violations(edited({"training.iterations": 999})) == []
