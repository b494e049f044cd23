"""`rlhfctl run JOB.yaml`: run a job on this machine (local mode).

Prints a progress line per iteration and the summary at the end; the output
directory (default `runs/<job name>`) receives metrics.jsonl, summary.json,
checkpoints/ and export/ (see `rlhf_operator.coordinator.outputs`). Running
the same command again resumes from the newest complete checkpoint there.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..api.manifests import load_jobs


def add_parser(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "run",
        help="run a job locally (no Kubernetes)",
        description="Run an RLHFJob on this machine: the coordinator in this process and one "
        "worker process per device slot (CPU with gloo when there is no GPU).",
    )
    parser.add_argument("file", metavar="JOB.yaml", help="the job manifest")
    parser.add_argument(
        "--output", "-o", metavar="DIR", help="output directory (default runs/<job name>)"
    )
    parser.add_argument("--name", help="the job to run when the file holds several")
    parser.add_argument(
        "--metrics-port",
        type=int,
        default=0,
        metavar="PORT",
        help="serve Prometheus metrics on 127.0.0.1:PORT (0: any free port)",
    )
    parser.add_argument("--no-metrics", action="store_true", help="do not serve metrics")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    jobs, problems = load_jobs(args.file)
    for problem in problems:
        print(problem, file=sys.stderr)
    if problems:
        return 1
    if args.name:
        jobs = [j for j in jobs if j.metadata.name == args.name]
    if len(jobs) != 1:
        names = ", ".join(j.metadata.name for j in jobs) or "none"
        print(
            f"{args.file}: holds {len(jobs)} matching RLHFJobs ({names}); pick one with --name",
            file=sys.stderr,
        )
        return 1
    job = jobs[0]
    # Imported here: planning and the coordinator are only needed once the file is valid.
    from ..coordinator.local import JobFailed, LocalRun
    from ..coordinator.outputs import OutputDir
    from ..planner import PlanError, plan_job

    try:
        plan = plan_job(job)
    except PlanError as err:
        print(f"{args.file}: RLHFJob/{job.metadata.name}: {err}", file=sys.stderr)
        return 1
    output = OutputDir(Path(args.output or Path("runs") / job.metadata.name).resolve())
    base_dir = Path(args.file).resolve().parent if args.file != "-" else Path.cwd()
    print(
        f"RLHFJob/{job.metadata.name}: {job.spec.algorithm.name}, {len(plan.calls)} calls on "
        f"{job.spec.device_count} {'CPU slot(s)' if job.spec.resources.local else 'GPU(s)'} "
        f"({plan.strategy} plan, estimated {plan.iteration_seconds:.2f} s/iteration); "
        f"output {output.root}",
        file=sys.stderr,
    )
    local = LocalRun(
        job, plan, base_dir, output, metrics_port=None if args.no_metrics else args.metrics_port
    )
    try:
        summary = local.run()
    except JobFailed as err:
        print(f"RLHFJob/{job.metadata.name}: failed: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(
            f"RLHFJob/{job.metadata.name}: stopped; run the same command to resume", file=sys.stderr
        )
        return 130
    print(json.dumps(summary, indent=2))
    return 0
