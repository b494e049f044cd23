"""The operator's Prometheus metrics (names in `rlhf_operator.metrics_names`)."""

from __future__ import annotations

import threading
from typing import get_args

from prometheus_client import Counter, Gauge, Histogram

from .. import metrics_names as m
from ..api.status import Phase

PHASES = get_args(Phase)  # every phase gets a series, zero when no job is in it

RECONCILES = Counter(
    m.RECONCILE_TOTAL.removesuffix("_total"),
    "Reconciliations of RLHFJobs, by result (done, wait, error).",
    ["result"],
)
RECONCILE_SECONDS = Histogram(
    m.RECONCILE_DURATION,
    "Seconds one reconciliation of an RLHFJob took, by result.",
    ["result"],
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
JOBS = Gauge(m.JOBS, "RLHFJobs known to the operator, by phase.", ["phase"])
RESTARTS = Counter(
    m.JOB_RESTARTS_TOTAL.removesuffix("_total"),
    "Restarts of a job's pods (resuming from the last checkpoint), by cause: "
    "failure (counted against backoffLimit) or disruption (eviction, preemption).",
    ["cause"],
)
FINISHED = Counter(
    m.JOBS_FINISHED_TOTAL.removesuffix("_total"),
    "RLHFJobs that reached a terminal phase, by result (Succeeded, Failed).",
    ["result"],
)
TIME_TO_RUNNING = Histogram(
    m.TIME_TO_RUNNING,
    "Seconds from a job's creation to all of its pods running.",
    buckets=(1, 5, 10, 30, 60, 120, 300, 600, 1800, 3600),
)
PLANNING_SECONDS = Histogram(
    m.PLANNING_DURATION,
    "Seconds the planner took for one job.",
    buckets=(0.01, 0.05, 0.1, 0.5, 1, 2, 5, 10, 30, 60, 120),
)

_phases: dict[str, str] = {}
_lock = threading.Lock()


def record_phase(uid: str, phase: str | None) -> None:
    """Remember a job's phase (None: the job is gone) and refresh the gauge."""
    with _lock:
        if phase is None:
            _phases.pop(uid, None)
        else:
            _phases[uid] = phase
        counts = dict.fromkeys(PHASES, 0)
        for p in _phases.values():
            counts[p] = counts.get(p, 0) + 1
        for p, n in counts.items():
            JOBS.labels(phase=p).set(n)


def job_count() -> int:
    """Jobs the operator knows (its liveness probe reports it)."""
    with _lock:
        return len(_phases)
