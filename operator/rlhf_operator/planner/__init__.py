"""The planner: device profiles, the workload, the runtime estimator, the
execution-plan search and its baselines. Pure Python (no torch), fast enough to
run inside the operator for every job. See README.md for the plan's JSON contract."""

from .plan import CallPlan, Offload, Plan, Reallocation
from .planning import InfeasibleError, PlanError, cluster_for, plan_job

__all__ = [
    "CallPlan",
    "InfeasibleError",
    "Offload",
    "Plan",
    "PlanError",
    "Reallocation",
    "cluster_for",
    "plan_job",
]
