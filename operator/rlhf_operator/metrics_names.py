"""Every Prometheus metric the project exports, by name: one list that the
operator, the coordinator and the Grafana dashboard (a test checks it) share.

Naming follows Prometheus practice: one prefix (`rlhf_`), base units in the
name (`_seconds`, `_bytes`), `_total` for counters, no high-cardinality labels.
"""

from __future__ import annotations

# The operator (one process for the cluster), served on its /metrics.
RECONCILE_TOTAL = "rlhf_operator_reconcile_total"  # counter, label result
RECONCILE_DURATION = "rlhf_operator_reconcile_duration_seconds"  # histogram, label result
JOBS = "rlhf_operator_jobs"  # gauge, label phase
JOB_RESTARTS_TOTAL = "rlhf_operator_job_restarts_total"  # counter
JOBS_FINISHED_TOTAL = "rlhf_operator_jobs_finished_total"  # counter, label result
TIME_TO_RUNNING = "rlhf_operator_time_to_running_seconds"  # histogram
PLANNING_DURATION = "rlhf_operator_planning_duration_seconds"  # histogram

# One job's coordinator, served on its pod's metrics port (label rlhfjob; the scrape
# adds namespace and pod).
JOB_ITERATION_SECONDS = "rlhf_job_iteration_seconds"  # histogram
JOB_CALL_SECONDS = "rlhf_job_call_seconds"  # histogram, label call
JOB_REALLOCATION_SECONDS = "rlhf_job_reallocation_seconds"  # histogram
JOB_REALLOCATION_BYTES_TOTAL = "rlhf_job_reallocation_bytes_total"  # counter
JOB_TOKENS_PER_SECOND = "rlhf_job_tokens_per_second"  # gauge
JOB_REWARD_MEAN = "rlhf_job_reward_mean"  # gauge
JOB_KL = "rlhf_job_kl"  # gauge
JOB_ITERATION = "rlhf_job_iteration"  # gauge

OPERATOR_METRICS = (
    RECONCILE_TOTAL,
    RECONCILE_DURATION,
    JOBS,
    JOB_RESTARTS_TOTAL,
    JOBS_FINISHED_TOTAL,
    TIME_TO_RUNNING,
    PLANNING_DURATION,
)
JOB_METRICS = (
    JOB_ITERATION_SECONDS,
    JOB_CALL_SECONDS,
    JOB_REALLOCATION_SECONDS,
    JOB_REALLOCATION_BYTES_TOTAL,
    JOB_TOKENS_PER_SECOND,
    JOB_REWARD_MEAN,
    JOB_KL,
    JOB_ITERATION,
)
HISTOGRAMS = (
    RECONCILE_DURATION,
    TIME_TO_RUNNING,
    PLANNING_DURATION,
    JOB_ITERATION_SECONDS,
    JOB_CALL_SECONDS,
    JOB_REALLOCATION_SECONDS,
)


def exported_series() -> set[str]:
    """Every series name a scrape can show, histograms' _bucket/_sum/_count included."""
    out = set(OPERATOR_METRICS) | set(JOB_METRICS)
    for name in HISTOGRAMS:
        out |= {f"{name}_bucket", f"{name}_sum", f"{name}_count"}
    return out
