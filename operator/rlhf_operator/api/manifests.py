"""Reading job manifests: safe YAML loading and validation into readable errors.

Everything here turns bad input into `Problem`s (one line each) and never
raises: files that cannot be read, text that is not YAML, YAML bombs (aliases
expanding to millions of nodes), absurd nesting, documents of another kind.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from .checks import FieldError, semantic_errors
from .job import API_VERSION, KIND, NAME_PATTERN, RLHFJob
from .models import REWARD_FUNCTION_PATTERN
from .pod_policy import DEFAULT_POD_POLICY, PodPolicy, policy_errors
from .spec import GPU_TYPE_PATTERN, MESH_PATTERN

MAX_FILE_BYTES = 2 * 1024 * 1024  # Kubernetes objects are limited to ~1.5 MiB
MAX_NODES = 200_000  # after alias expansion
MAX_DEPTH = 64
MAX_MESSAGE = 400


@dataclass(frozen=True)
class Problem:
    """One thing wrong with one document (or with the file, when document is None)."""

    source: str
    document: int | None
    job: str | None
    message: str

    def __str__(self) -> str:
        where = self.source if self.document is None else f"{self.source}[{self.document}]"
        who = f" RLHFJob/{self.job}:" if self.job else ""
        return f"{where}:{who} {one_line(self.message)}"


@dataclass
class Document:
    """One YAML document of a file, validated."""

    source: str
    index: int
    job: RLHFJob | None
    problems: list[Problem]


def one_line(text: str) -> str:
    """Make text safe to print as one line: no control characters, bounded length."""
    cleaned = "".join(ch if ch.isprintable() else repr(ch)[1:-1] for ch in text.replace("\n", " "))
    return cleaned if len(cleaned) <= MAX_MESSAGE else cleaned[: MAX_MESSAGE - 3] + "..."


def _shape(node: yaml.Node) -> tuple[int, int]:
    """(expanded node count, depth) of a composed YAML node graph, capped; aliases counted as expanded."""
    memo: dict[int, tuple[int, int]] = {}
    # Iterative post-order walk: deep nesting must not hit Python's recursion limit.
    stack: list[tuple[yaml.Node, bool]] = [(node, False)]
    on_stack: set[int] = set()
    while stack:
        current, done = stack.pop()
        key = id(current)
        if key in memo:
            continue
        children: list[yaml.Node] = []
        if isinstance(current, yaml.SequenceNode):
            children = list(current.value)
        elif isinstance(current, yaml.MappingNode):
            children = [n for pair in current.value for n in pair]
        if not done:
            if key in on_stack:  # a recursive alias: treat as unbounded
                return MAX_NODES + 1, MAX_DEPTH + 1
            on_stack.add(key)
            stack.append((current, True))
            stack.extend((c, False) for c in children if id(c) not in memo)
            if len(stack) > MAX_NODES:
                return MAX_NODES + 1, MAX_DEPTH + 1
            continue
        on_stack.discard(key)
        count = 1 + sum(memo[id(c)][0] for c in children if id(c) in memo)
        depth = 1 + max((memo[id(c)][1] for c in children if id(c) in memo), default=0)
        memo[key] = (min(count, MAX_NODES + 1), min(depth, MAX_DEPTH + 1))
    return memo[id(node)]


def load_documents(text: str, source: str) -> tuple[list[Any], list[Problem]]:
    """Parse multi-document YAML into plain objects, refusing bombs and absurd nesting."""
    docs: list[Any] = []
    problems: list[Problem] = []
    nodes: list[yaml.Node | None] = []
    limit = sys.getrecursionlimit()
    try:
        # PyYAML composes recursively: deep nesting needs headroom (and is
        # refused below anyway). Documents before a syntax error are kept.
        sys.setrecursionlimit(max(limit, 20_000))
        nodes.extend(yaml.compose_all(text, Loader=yaml.SafeLoader))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        problems.append(Problem(source, len(nodes), None, f"not valid YAML{where}: {problem}"))
    except RecursionError:
        problems.append(
            Problem(source, len(nodes), None, f"nesting deeper than {MAX_DEPTH} levels")
        )
    finally:
        sys.setrecursionlimit(limit)
    for index, maybe_node in enumerate(nodes):
        if maybe_node is None:
            docs.append(None)
            continue
        node = maybe_node
        count, depth = _shape(node)
        if count > MAX_NODES:
            problems.append(
                Problem(
                    source,
                    index,
                    None,
                    f"more than {MAX_NODES} YAML nodes once aliases are expanded",
                )
            )
            docs.append(None)
            continue
        if depth > MAX_DEPTH:
            problems.append(Problem(source, index, None, f"nesting deeper than {MAX_DEPTH} levels"))
            docs.append(None)
            continue
        try:
            docs.append(yaml.SafeLoader("").construct_document(node))
        except (yaml.YAMLError, RecursionError, ValueError, TypeError) as exc:
            problems.append(Problem(source, index, None, f"not valid YAML: {exc}"))
            docs.append(None)
    return docs, problems


def _path(loc: tuple[int | str, ...], prefix: str = "") -> str:
    out = prefix
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out or "(document)"


# Plain words for the regular expressions of the API, shown instead of the pattern.
PATTERN_HINTS = {
    NAME_PATTERN: "must be lowercase letters, digits and '-', start with a letter and end with a letter or digit",
    MESH_PATTERN: "must be a mesh: N or N-M (whole nodes) or N:A-B (devices A..B of node N)",
    REWARD_FUNCTION_PATTERN: "must be module:function, e.g. my_rewards.math:score",
    GPU_TYPE_PATTERN: "must be a profile name such as H100, H200, A100-80GB or L40S",
}


def _describe(error: Any) -> FieldError:
    loc = tuple(error["loc"])
    kind = error["type"]
    if kind == "string_pattern_mismatch":
        hint = PATTERN_HINTS.get(error.get("ctx", {}).get("pattern"))
        if hint:
            return FieldError(_path(loc), f"{hint} (got {one_line(repr(error.get('input')))[:80]})")
    if kind == "extra_forbidden":
        return FieldError(_path(loc), "unknown field")
    if kind == "missing":
        return FieldError(_path(loc), "required field is missing")
    message = error["msg"]
    value = error.get("input")
    if isinstance(value, str | int | float | bool) and kind not in ("value_error",):
        shown = repr(value)
        if len(shown) > 60:
            shown = shown[:57] + "..."
        message = f"{message} (got {shown})"
    return FieldError(_path(loc), message)


def validate_object(
    obj: Any, policy: PodPolicy | None = DEFAULT_POD_POLICY
) -> tuple[RLHFJob | None, list[FieldError]]:
    """Validate one parsed document as an RLHFJob, and its pod template against `policy`
    (None: no pod policy, the operator applies its own); never raises."""
    if not isinstance(obj, dict):
        return None, [
            FieldError("(document)", f"expected a mapping (an RLHFJob), got {type(obj).__name__}")
        ]
    kind, api_version = obj.get("kind"), obj.get("apiVersion")
    if kind != KIND:
        return None, [FieldError("kind", f"expected {KIND}, got {one_line(repr(kind))}")]
    if api_version != API_VERSION:
        return None, [
            FieldError("apiVersion", f"expected {API_VERSION}, got {one_line(repr(api_version))}")
        ]
    try:
        job = RLHFJob.model_validate(obj)
    except ValidationError as exc:
        return None, [_describe(e) for e in exc.errors()]
    except (RecursionError, ValueError, TypeError) as exc:  # defensive: pydantic wraps most
        return None, [FieldError("(document)", f"cannot be validated: {exc}")]
    return job, semantic_errors(job) + (policy_errors(job, policy) if policy else [])


def _job_name(obj: Any) -> str | None:
    if isinstance(obj, dict) and isinstance(obj.get("metadata"), dict):
        name = obj["metadata"].get("name")
        if isinstance(name, str) and name:
            return one_line(name)[:80]
    return None


def validate_text(text: str, source: str) -> tuple[list[Document], list[Problem]]:
    """Validate every document of a YAML text. Returns the documents and file-level problems."""
    objects, problems = load_documents(text, source)
    documents = []
    failed = {p.document for p in problems}
    for index, obj in enumerate(objects):
        if obj is None:
            continue  # empty document (e.g. a trailing ---) or one already reported
        if index in failed:
            continue
        job, errors = validate_object(obj)
        name = _job_name(obj)
        documents.append(
            Document(
                source,
                index,
                job if not errors else None,
                [Problem(source, index, name, str(e)) for e in errors],
            )
        )
    return documents, problems


def read_manifest_file(path: str) -> tuple[str | None, Problem | None]:
    """Read a manifest file's text ('-' is standard input), or say why it cannot be read."""
    try:
        if path == "-":
            data = sys.stdin.buffer.read(MAX_FILE_BYTES + 1)
        else:
            p = Path(path)
            if p.is_dir():
                return None, Problem(path, None, None, "is a directory, not a manifest file")
            with p.open("rb") as fh:
                data = fh.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        return None, Problem(path, None, None, f"cannot read: {exc.strerror or exc}")
    if len(data) > MAX_FILE_BYTES:
        return None, Problem(path, None, None, f"larger than {MAX_FILE_BYTES // (1024 * 1024)} MiB")
    try:
        return data.decode("utf-8"), None
    except UnicodeDecodeError as exc:
        return None, Problem(path, None, None, f"not UTF-8 text (byte {exc.start})")


def load_jobs(path: str) -> tuple[list[RLHFJob], list[Problem]]:
    """Every valid RLHFJob of a file, and every problem; what `run` and `plan` start from."""
    text, problem = read_manifest_file(path)
    if problem is not None or text is None:
        return [], [problem] if problem else []
    documents, problems = validate_text(text, path)
    problems += [p for d in documents for p in d.problems]
    jobs = [d.job for d in documents if d.job is not None]
    if not documents and not problems:
        problems.append(Problem(path, None, None, "contains no RLHFJob"))
    return jobs, problems
