"""`rlhfctl manifests JOB.yaml`: every object the operator would create for a job's
first attempt, as YAML documents (as `helm template` prints a chart), from the same
builders the operator runs, so that a platform team can review them before applying
the job: pods and their requests, /dev/shm, the gang's labels, RBAC.

The job is planned here as the operator plans it (`--gpus` and friends plan it for
another cluster shape, as with `rlhfctl plan`). The operator's settings (images,
interface, shm size) come from the same `RLHF_OPERATOR_*` variables the operator
reads, defaults otherwise. Two things only the API server would fill in are
placeholders: the job's uid in the owner references, and the control-plane token,
which the operator generates for each job.
"""

from __future__ import annotations

import argparse
import os
import sys

import yaml

from ..api import validate_object
from ..api.job import RLHFJob
from ..api.manifests import load_jobs, one_line
from ..k8s.builders import JobRef, build_children, build_config_map, job_manifest_yaml, topology_for
from ..k8s.config import OperatorConfig
from ..k8s.status import host_bytes_per_device
from ..planner import PlanError, plan_job
from ..planner.profiles import ProfileError
from .plan import add_job_and_devices

PLACEHOLDER_UID = "00000000-0000-0000-0000-000000000000"
PLACEHOLDER_TOKEN = "generated-by-the-operator"


def add_parser(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "manifests",
        help="print the objects the operator would create for a job",
        description="Print, as YAML documents, every object the operator creates for the "
        "job's first attempt (ConfigMap with the plan, Secret, Service, RBAC, PodGroup, "
        "coordinator and worker pods), built by the operator's own builders.",
    )
    add_job_and_devices(parser)
    parser.set_defaults(func=run)


def with_devices(job: RLHFJob, args: argparse.Namespace) -> tuple[RLHFJob | None, str]:
    """The job as if its spec asked for the devices given on the command line, checked
    as any manifest is; (None, the problems) if that spec is not valid."""
    changes = {
        key: value
        for key, value in (
            ("gpus", args.gpus),
            ("gpusPerNode", args.gpus_per_node),
            ("gpuType", args.gpu_type),
        )
        if value is not None
    }
    if not changes:
        return job, ""
    manifest = job.to_manifest()
    resources = manifest["spec"]["resources"]
    if "gpus" in changes:
        resources.pop("local", None)
    resources.update(changes)
    changed, errors = validate_object(manifest)
    return changed, "; ".join(str(e) for e in errors)


def job_objects(job: RLHFJob, config: OperatorConfig) -> list[dict]:
    """The first attempt's objects: the ConfigMap first, as the operator creates them."""
    plan = plan_job(job)
    namespace = job.metadata.namespace or "default"
    ref = JobRef(job.metadata.name, namespace, PLACEHOLDER_UID)
    body = job.to_manifest()
    body["metadata"] = {**body.get("metadata", {}), "namespace": namespace}
    config_map = build_config_map(ref, job_manifest_yaml(body), plan.to_json())
    children = build_children(
        ref, job, config, topology_for(job), 0, PLACEHOLDER_TOKEN, host_bytes_per_device(plan)
    )
    return [config_map, *children]


def run(args: argparse.Namespace) -> int:
    jobs, problems = load_jobs(args.file)
    for p in problems:
        print(str(p), file=sys.stderr)
    if problems:
        return 1
    try:
        config = OperatorConfig.from_env(os.environ)
    except ValueError as err:
        print(f"rlhfctl manifests: {err}", file=sys.stderr)
        return 1
    documents: list[dict] = []
    for job in jobs:
        who = f"{args.file}: RLHFJob/{job.metadata.name}"
        changed, problem = with_devices(job, args)
        if changed is None or problem:
            print(f"{who}: {one_line(problem)}", file=sys.stderr)
            return 1
        try:
            documents += job_objects(changed, config)
        except (PlanError, ProfileError, ValueError) as exc:
            print(f"{who}: {one_line(str(exc))}", file=sys.stderr)
            return 1
    sys.stdout.write(yaml.safe_dump_all(documents, sort_keys=False))
    return 0
