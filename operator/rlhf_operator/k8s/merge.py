"""Merging a user's pod template over a built pod, the way people expect from
`kubectl patch --type strategic`: objects merge key by key, lists of named
things (containers, env, volumes, volumeMounts, ports) merge by name, other
lists replace. The user wins on every field they set."""

from __future__ import annotations

import copy
from typing import Any

# Lists whose items are merged by this key instead of being replaced.
MERGE_KEYS = {
    "containers": "name",
    "initContainers": "name",
    "env": "name",
    "volumes": "name",
    "volumeMounts": "mountPath",
    "ports": "containerPort",
    "imagePullSecrets": "name",
}
# Lists the user's items are added to (ours are kept).
APPEND = {"tolerations"}


def merge(base: Any, override: Any, key: str | None = None) -> Any:
    """`override` merged over `base`; neither is modified."""
    if isinstance(base, dict) and isinstance(override, dict):
        out = copy.deepcopy(base)
        for k, v in override.items():
            out[k] = merge(base[k], v, k) if k in base else copy.deepcopy(v)
        return out
    if isinstance(base, list) and isinstance(override, list):
        if key in APPEND:
            return copy.deepcopy(base) + [copy.deepcopy(v) for v in override if v not in base]
        merge_key = MERGE_KEYS.get(key or "")
        if merge_key:
            return _merge_named(base, override, merge_key, key)
    return copy.deepcopy(override)


def _merge_named(
    base: list[Any], override: list[Any], merge_key: str, key: str | None
) -> list[Any]:
    out = copy.deepcopy(base)
    for item in override:
        name = item.get(merge_key) if isinstance(item, dict) else None
        # A container without a name means "the main container" (the first one).
        if key == "containers" and name is None and out:
            out[0] = merge(out[0], item)
            continue
        for i, existing in enumerate(out):
            if isinstance(existing, dict) and name is not None and existing.get(merge_key) == name:
                out[i] = merge(existing, item)
                break
        else:
            out.append(copy.deepcopy(item))
    return out
