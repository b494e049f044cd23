"""The planner: device profiles, the workload, the runtime estimator, the
execution-plan search and its baselines. Pure Python (no torch), fast enough to
run inside the operator for every job. It makes a `contract.plan.Plan`; see
README.md for the plan's JSON contract."""

from .planning import InfeasibleError, PlanError, cluster_for, plan_job

__all__ = ["InfeasibleError", "PlanError", "cluster_for", "plan_job"]
