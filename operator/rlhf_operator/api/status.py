"""The RLHFJob status: written by the operator (phase, conditions) and by the job's coordinator (progress)."""

from __future__ import annotations

from typing import Literal

from pydantic import ConfigDict, Field

from .base import ApiModel

Phase = Literal[
    "Pending",
    "Queued",
    "Planning",
    "Starting",
    "Running",
    "Restarting",
    "Suspended",
    "Succeeded",
    "Failed",
]
ConditionType = Literal[
    "Valid",
    "SpecAccepted",
    "Planned",
    "Admitted",
    "PodsReady",
    "Running",
    "Suspended",
    "Succeeded",
    "Failed",
]


class Condition(ApiModel):
    """One observation of the job, in the shape of metav1.Condition."""

    type: ConditionType
    """What the condition is about."""
    status: Literal["True", "False", "Unknown"]
    """Whether it holds."""
    reason: str = Field(
        min_length=1, max_length=1024, pattern=r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$"
    )
    """CamelCase machine-readable reason (e.g. InsufficientGPUs, WorkerFailed)."""
    message: str = Field(default="", max_length=32768)
    """Human-readable detail."""
    last_transition_time: str | None = None
    """When the status last changed (RFC 3339)."""
    observed_generation: int | None = None
    """The spec generation the condition was computed from."""


class CallSummary(ApiModel):
    """One call of the plan."""

    name: str
    """Call name (actor_gen, actor_train, ...)."""
    mesh: str
    """Devices it runs on."""
    dp: int
    """Data-parallel degree."""
    tp: int
    """Tensor-parallel degree."""
    pp: int
    """Pipeline-parallel degree."""
    seconds: float | None = None
    """Estimated seconds per iteration."""


class PlanSummary(ApiModel):
    """The plan the job runs (the full plan is in the ConfigMap named here)."""

    strategy: str
    """How the plan was chosen."""
    config_map: str | None = None
    """ConfigMap holding the full plan."""
    iteration_seconds: float | None = None
    """Estimated seconds per iteration."""
    tokens_per_second: float | None = None
    """Estimated throughput."""
    host_bytes_per_device: int | None = None
    """Host memory the plan keeps per device (offloaded roles): what sizes the worker pods' memory."""
    calls: list[CallSummary] = Field(default_factory=list)
    """Each call's placement."""


class CheckpointRef(ApiModel):
    """The newest complete checkpoint."""

    iteration: int
    """Iteration the checkpoint was taken after."""
    path: str
    """Where it is."""
    time: str | None = None
    """When it was committed (RFC 3339)."""


class MetricsSummary(ApiModel):
    """The latest iteration's headline figures."""

    reward_mean: float | None = None
    """Mean reward of the iteration's responses."""
    kl: float | None = None
    """Mean KL to the reference policy."""
    tokens_per_second: float | None = None
    """Generated plus trained tokens per second."""
    iteration_seconds: float | None = None
    """Wall-clock seconds of the iteration."""


class RLHFJobStatus(ApiModel):
    """Observed state of the job."""

    model_config = ConfigDict(extra="allow")

    phase: Phase | None = None
    """Lifecycle phase: Pending (planning, or the cluster has too few GPUs for it), Queued (waiting for its GPUs to be free), Starting, Running, Restarting, Suspended, Succeeded or Failed."""
    conditions: list[Condition] = Field(default_factory=list)
    """Conditions with reasons."""
    observed_generation: int | None = None
    """The spec generation last acted upon."""
    plan: PlanSummary | None = None
    """Summary of the plan."""
    iteration: int | None = None
    """Iterations completed."""
    attempt: int | None = None
    """The pods' attempt (in their names and the rlhf.dev/attempt label): one more at every restart and resume."""
    pod_group: str | None = None
    """The Kueue pod group (Workload) the pods belong to: a new one after each resume."""
    restarts: int | None = None
    """Times the job's pods were restarted after a failure or a disruption."""
    disruptions: int | None = None
    """Restarts after a disruption (a pod evicted, preempted or drained: its
    DisruptionTarget condition); these do not count against runPolicy.backoffLimit."""
    gpus: int | None = None
    """Devices the job holds."""
    start_time: str | None = None
    """When the job started running (RFC 3339)."""
    completion_time: str | None = None
    """When the job finished (RFC 3339)."""
    last_checkpoint: CheckpointRef | None = None
    """Newest complete checkpoint."""
    metrics: MetricsSummary | None = None
    """Latest figures."""
