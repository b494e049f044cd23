"""Kubernetes resource quantities ("500m", "16Gi", "4"): read to numbers, written back.

Only the forms the API accepts (`api.spec.QUANTITY_PATTERN`): a decimal number with
an optional SI (k, M, G...) or binary (Ki, Mi, Gi...) suffix, or m for thousandths.
"""

from __future__ import annotations

import math
import re

_SUFFIXES = {
    "": 1.0,
    "m": 1e-3,
    "k": 1e3,
    "M": 1e6,
    "G": 1e9,
    "T": 1e12,
    "P": 1e15,
    "Ki": 2.0**10,
    "Mi": 2.0**20,
    "Gi": 2.0**30,
    "Ti": 2.0**40,
    "Pi": 2.0**50,
}
_QUANTITY = re.compile(r"^([0-9]+(?:\.[0-9]+)?)([a-zA-Z]*)$")


def parse_quantity(text: str) -> float:
    """The number a quantity stands for (cores, bytes); ValueError if it is not one."""
    match = _QUANTITY.match(text.strip())
    if match is None or match.group(2) not in _SUFFIXES:
        raise ValueError(f"{text!r} is not a Kubernetes quantity")
    return float(match.group(1)) * _SUFFIXES[match.group(2)]


def cpu_quantity(cores: float) -> str:
    """Cores as Kubernetes writes them: whole cores plain, otherwise millicores."""
    milli = math.ceil(round(cores * 1000, 6))
    return str(milli // 1000) if milli % 1000 == 0 else f"{milli}m"


def memory_quantity(size: float) -> str:
    """Bytes rounded up to whole MiB (Gi when exact)."""
    mib = math.ceil(round(size / 2**20, 6))
    return f"{mib // 1024}Gi" if mib % 1024 == 0 else f"{mib}Mi"
