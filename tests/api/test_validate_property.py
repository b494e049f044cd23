"""Property: whatever is done to a manifest, validation answers in lines and never raises."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rlhf_operator.api.manifests import validate_text
from rlhf_operator.cli.main import main

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = [yaml.safe_load(p.read_text()) for p in sorted((ROOT / "examples").glob("*.yaml"))]

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=30),
    st.sampled_from(["", "0", "manual", "ppo", "0:0-3", "tiny", "a:b", "-1", "1e400"]),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=12), inner, max_size=4)
    ),
    max_leaves=12,
)


def _paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix]
    if isinstance(node, dict):
        for key, value in node.items():
            out += _paths(value, (*prefix, key))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            out += _paths(value, (*prefix, i))
    return out


@st.composite
def mutated_manifests(draw: st.DrawFn) -> Any:
    doc: Any = copy.deepcopy(draw(st.sampled_from(EXAMPLES)))
    for _ in range(draw(st.integers(min_value=1, max_value=4))):
        paths = _paths(doc)
        path = draw(st.sampled_from(paths))
        action = draw(st.sampled_from(["replace", "delete", "add", "wrap"]))
        if not path:
            doc = draw(values) if action == "replace" else doc
            continue
        parent: Any = doc
        for key in path[:-1]:
            parent = parent[key]
        last = path[-1]
        if action == "replace":
            parent[last] = draw(values)
        elif action == "delete":
            del parent[last]
        elif action == "add" and isinstance(parent[last], dict):
            parent[last][draw(st.text(max_size=12))] = draw(values)
        elif action == "wrap":
            parent[last] = [parent[last]]
    return doc


def _check_lines(lines: list[str]) -> None:
    for line in lines:
        assert "\n" not in line and "Traceback" not in line
        assert len(line) < 1200


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated_manifests())
def test_mutated_manifests_get_lines_not_exceptions(doc: Any) -> None:
    text = yaml.safe_dump(doc, allow_unicode=True)
    documents, problems = validate_text(text, "m.yaml")
    _check_lines([str(p) for p in problems] + [str(p) for d in documents for p in d.problems])
    for d in documents:
        assert (d.job is None) == bool(d.problems)


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=400))
def test_arbitrary_text_never_raises(text: str) -> None:
    documents, problems = validate_text(text, "t.yaml")
    _check_lines([str(p) for p in problems] + [str(p) for d in documents for p in d.problems])


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(doc=mutated_manifests())
def test_cli_exit_code_and_no_traceback(tmp_path_factory: Any, capsys: Any, doc: Any) -> None:
    path = tmp_path_factory.mktemp("m") / "job.yaml"
    path.write_text(yaml.safe_dump(doc, allow_unicode=True))
    code = main(["validate", str(path)])
    out, err = capsys.readouterr()
    assert code in (0, 1)
    assert "Traceback" not in out + err
    assert (code == 0) == (err == "")
