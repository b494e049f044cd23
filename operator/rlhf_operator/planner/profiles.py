"""Device profiles: what one GPU (or one CPU slot) and its links can do.

A profile is a small YAML file (see `profiles/*.yaml`, shipped with the
package). `rlhfctl profile` measures one and writes the same format. Profiles
are looked up by name (case-insensitive) in, in order: the directories named
by the environment variable `RLHF_PROFILES` (colon-separated), then the
package's `profiles/` directory. A path to a `.yaml` file also works.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

PACKAGE_DIR = Path(__file__).with_name("profiles")
ENV_VAR = "RLHF_PROFILES"


class ProfileError(ValueError):
    """A profile that cannot be found or read."""


@dataclass(frozen=True)
class GenerationBackend:
    """How a generation backend uses the device during decoding."""

    bandwidth_efficiency: float
    """Fraction of memory bandwidth a decode step reaches (weights and KV cache reads)."""
    step_overhead_per_layer: float
    """Seconds of launch/scheduling overhead per decoder layer per decode step."""
    step_overhead_per_sequence: float = 0.0
    """Seconds per sequence per decode step beyond the model's work (the torch engine's
    sampling and bookkeeping, as `rlhfctl profile` measures them)."""
    engine_overhead_bytes: float = 0.0
    """Device bytes a separate engine (vLLM) holds beyond its weights, KV cache and
    activations: captured CUDA graphs, sampler buffers, NCCL and cuBLAS workspaces."""


@dataclass(frozen=True)
class Profile:
    """One device type: compute, memory, and the links between devices."""

    name: str
    kind: str  # "gpu" or "cpu"
    peak_flops: float
    matmul_efficiency: float
    matmul_half_tokens: float
    memory_bytes: int
    usable_memory_fraction: float
    memory_bandwidth: float
    bandwidth_efficiency: float
    intra_node_bandwidth: float
    intra_node_latency: float
    inter_node_bandwidth: float
    inter_node_latency: float
    host_bandwidth: float
    kernel_overhead: float
    generation: dict[str, GenerationBackend] = field(default_factory=dict)
    measured: dict[str, Any] = field(default_factory=dict)
    # Optional (older profiles lack them; the defaults are the former fixed assumptions).
    backward_factor: float = 2.0
    """A training backward's time over its forward's (2: two GEMMs per forward GEMM)."""
    optimizer_step_overhead: float = 0.0
    """Seconds per optimizer step that do not grow with the batch (the torch engine's AdamW
    and gradient bookkeeping loop over the parameters in Python)."""
    call_overhead: float = 0.0
    """Seconds a worker spends on any call beyond its model work (handler entry, input lookup,
    result bookkeeping)."""
    function_seconds_per_sample: float = 2e-4
    """A reward function call per sample: decoding the response and the Python function."""

    @property
    def usable_memory(self) -> float:
        return self.memory_bytes * self.usable_memory_fraction

    def backend(self, name: str) -> GenerationBackend:
        if name in self.generation:
            return self.generation[name]
        if "torch" in self.generation:
            return self.generation["torch"]
        return GenerationBackend(0.5, 1e-4)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        if not out["measured"]:
            del out["measured"]
        return out


_OPTIONAL_FIELDS = (
    "backward_factor",
    "optimizer_step_overhead",
    "call_overhead",
    "function_seconds_per_sample",
)
_NUMBER_FIELDS = [
    f.name
    for f in fields(Profile)
    if f.name not in ("name", "kind", "generation", "measured", *_OPTIONAL_FIELDS)
]


def _number(data: dict[str, Any], key: str, source: str, allow_zero: bool = False) -> float:
    value = data[key]
    if isinstance(value, str):  # YAML 1.1 reads 1.0e12 (no exponent sign) as a string
        with contextlib.suppress(ValueError):
            value = float(value)
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or value < 0
        or (value == 0 and not allow_zero)
    ):
        kind = "a non-negative" if allow_zero else "a positive"
        raise ProfileError(f"{source}: {key} must be {kind} number (got {value!r})")
    return value


def profile_from_dict(data: Any, source: str = "profile") -> Profile:
    """Build a Profile from parsed YAML, with messages naming the bad field."""
    if not isinstance(data, dict):
        raise ProfileError(f"{source}: expected a mapping")
    values: dict[str, Any] = {}
    for key in _NUMBER_FIELDS:
        if key not in data:
            raise ProfileError(f"{source}: missing field {key}")
        values[key] = _number(data, key, source)
    for key in _OPTIONAL_FIELDS:
        if key in data:
            values[key] = _number(data, key, source, allow_zero=key.endswith("overhead"))
    values["memory_bytes"] = int(values["memory_bytes"])
    gen: dict[str, GenerationBackend] = {}
    raw_gen = data.get("generation") or {}
    if not isinstance(raw_gen, dict):
        raise ProfileError(f"{source}: generation must be a mapping of backends")
    for backend, params in raw_gen.items():
        try:
            gen[str(backend)] = GenerationBackend(
                float(params["bandwidth_efficiency"]),
                float(params["step_overhead_per_layer"]),
                float(params.get("step_overhead_per_sequence", 0.0)),
                float(params.get("engine_overhead_bytes", 0.0)),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ProfileError(f"{source}: generation.{backend}: {exc}") from None
    kind = str(data.get("kind", "gpu"))
    if kind not in ("gpu", "cpu"):
        raise ProfileError(f"{source}: kind must be gpu or cpu (got {kind!r})")
    measured = data.get("measured") or {}
    return Profile(
        name=str(data.get("name", source)),
        kind=kind,
        generation=gen,
        measured=dict(measured) if isinstance(measured, dict) else {},
        **values,
    )


def search_dirs() -> list[Path]:
    dirs = [Path(p) for p in os.environ.get(ENV_VAR, "").split(os.pathsep) if p]
    return [*dirs, PACKAGE_DIR]


def available_profiles() -> list[str]:
    """Names of the profiles that can be found."""
    names: list[str] = []
    for d in search_dirs():
        if d.is_dir():
            names += [p.stem for p in sorted(d.glob("*.yaml")) if p.stem not in names]
    return names


def read_profile(path: Path) -> Profile:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError, UnicodeDecodeError) as exc:
        raise ProfileError(f"{path}: cannot read profile: {exc}") from None
    return profile_from_dict(data, str(path))


_CACHE: dict[str, Profile] = {}


def load_profile(name: str) -> Profile:
    """The profile called `name` (case-insensitive), or the profile file at that path."""
    if name.endswith((".yaml", ".yml")) and Path(name).is_file():
        return read_profile(Path(name))
    key = name.lower()
    dirs = search_dirs()
    for d in dirs:
        if not d.is_dir():
            continue
        for path in sorted(d.glob("*.yaml")):
            if path.stem.lower() == key:
                cache_key = str(path)
                if cache_key not in _CACHE:
                    _CACHE[cache_key] = read_profile(path)
                return _CACHE[cache_key]
    raise ProfileError(
        f"no device profile {name!r} (known: {', '.join(available_profiles())}; "
        f"add one with `rlhfctl profile` and {ENV_VAR})"
    )
