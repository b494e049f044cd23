"""The GPU inventory: which Nodes can run a job's worker pods, and how many of
the job's node slots they offer. Pure functions over Node objects (dicts).

A node counts when it is schedulable, carries the job's node selector labels,
every NoSchedule/NoExecute taint on it is tolerated by the job, its
`nvidia.com/gpu.product` label (when present) names the job's GPU type, and it
has at least gpusPerNode allocatable `nvidia.com/gpu`. The plan's node slots
are gpusPerNode GPUs on one node each; a node with 16 GPUs and gpusPerNode 8
offers two. Allocatable GPUs are counted here: whether the cluster could ever
run the job (else it waits as Pending, InsufficientGPUs). Whether they are free
now is admission's question (`admission`, phase Queued).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from ..api import RLHFJob
from ..api.spec import Resources, Toleration

GPU_RESOURCE = "nvidia.com/gpu"
GPU_PRODUCT_LABEL = "nvidia.com/gpu.product"


@dataclass(frozen=True)
class NodeGPUs:
    """What the planner needs to know of one Node."""

    name: str
    gpus: int
    product: str | None = None
    labels: dict[str, str] = field(default_factory=dict)
    taints: tuple[dict[str, str], ...] = ()
    schedulable: bool = True
    ready: bool = True
    """Its Ready condition is True (a lost node's turns Unknown)."""


def node_gpus(node: dict[str, Any]) -> NodeGPUs:
    """Read one Node object; a malformed GPU count counts as none."""
    meta = node.get("metadata") or {}
    labels = dict(meta.get("labels") or {})
    status = node.get("status") or {}
    spec = node.get("spec") or {}
    raw = (status.get("allocatable") or {}).get(GPU_RESOURCE, "0")
    try:
        gpus = int(str(raw))
    except ValueError:
        gpus = 0
    taints = tuple(
        {k: str(v) for k, v in t.items() if k in ("key", "value", "effect")}
        for t in spec.get("taints") or []
        if isinstance(t, dict)
    )
    return NodeGPUs(
        name=str(meta.get("name", "")),
        gpus=max(gpus, 0),
        product=labels.get(GPU_PRODUCT_LABEL),
        labels=labels,
        taints=taints,
        schedulable=not spec.get("unschedulable", False),
        ready=_ready(status),
    )


def _ready(status: dict[str, Any]) -> bool:
    """Ready unless its Ready condition says otherwise (a node without conditions, as
    some test clusters have, counts as Ready)."""
    for c in status.get("conditions") or []:
        if isinstance(c, dict) and c.get("type") == "Ready":
            return c.get("status") == "True"
    return True


def tolerates(tolerations: list[Toleration], taint: dict[str, str]) -> bool:
    """Whether one of the tolerations matches the taint (Kubernetes' rules)."""
    for t in tolerations:
        if t.effect and t.effect != taint.get("effect"):
            continue
        if t.operator == "Exists":
            if t.key is None or t.key == taint.get("key"):
                return True
        elif t.key == taint.get("key") and (t.value or "") == taint.get("value", ""):
            return True
    return False


def product_matches(gpu_type: str, product: str | None) -> bool:
    """Whether a node's product label names the profile: every '-'-separated
    token of the profile is a token of the label (H100 ~ NVIDIA-H100-80GB-HBM3,
    A100-80GB ~ NVIDIA-A100-SXM4-80GB). Nodes without the label are not excluded."""
    if not product:
        return True
    have = {t.upper() for t in product.replace("_", "-").split("-")}
    return all(t.upper() in have for t in gpu_type.split("-"))


def eligible(res: Resources, node: NodeGPUs) -> bool:
    """Whether the job's worker pods (with these resources) may run on the node."""
    if not node.schedulable or not node.ready:
        return False
    if any(node.labels.get(k) != v for k, v in res.node_selector.items()):
        return False
    for taint in node.taints:
        if taint.get("effect") in ("NoSchedule", "NoExecute") and not tolerates(
            res.tolerations, taint
        ):
            return False
    return product_matches(res.gpu_type, node.product)


@dataclass(frozen=True)
class Capacity:
    """How the cluster's eligible nodes compare with what the job needs."""

    needed_gpus: int
    gpus_per_node: int
    needed_slots: int
    available_slots: int
    nodes: tuple[str, ...]

    @property
    def enough(self) -> bool:
        return self.available_slots >= self.needed_slots

    @property
    def missing_gpus(self) -> int:
        return max(0, self.needed_slots - self.available_slots) * self.gpus_per_node

    def message(self) -> str:
        have = self.available_slots * self.gpus_per_node
        return (
            f"needs {self.needed_gpus} GPUs as {self.needed_slots} node(s) x "
            f"{self.gpus_per_node}; eligible nodes offer {have} "
            f"({self.available_slots} slot(s) on {len(self.nodes)} node(s)): "
            f"{self.missing_gpus} GPUs missing"
        )


def capacity(job: RLHFJob, nodes: list[NodeGPUs]) -> Capacity:
    """The job's node slots against the eligible nodes (GPU jobs only)."""
    res = job.spec.resources
    total = res.gpus or 0
    per_node = min(res.gpus_per_node, total) if total else res.gpus_per_node
    needed = math.ceil(total / per_node) if per_node else 0
    usable = [n for n in nodes if eligible(res, n) and n.gpus >= per_node]
    slots = sum(n.gpus // per_node for n in usable)
    return Capacity(total, per_node, needed, slots, tuple(sorted(n.name for n in usable)))
