"""`rlhfctl plan JOB.yaml`: the execution plan of a job and its estimates."""

from __future__ import annotations

import argparse
import json
import sys

from ..api.manifests import load_jobs, one_line
from ..contract.plan import Plan
from ..planner import InfeasibleError, PlanError, plan_job
from ..planner.profiles import ProfileError

GiB = 1024**3


def add_parser(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "plan",
        help="show the execution plan of a job",
        description="Plan an RLHFJob: each call's mesh, layout, micro-batches, estimated time "
        "and memory, the reallocations, the iteration time and throughput, and the baselines' "
        "estimates. Exits 1 when the job does not fit in memory on any plan.",
    )
    add_job_and_devices(parser)
    parser.add_argument("--format", choices=["table", "json"], default="table")
    parser.add_argument("--seed", type=int, help="search seed (default: the job's training seed)")
    parser.add_argument("--search-seconds", type=float, help="search time budget")
    parser.set_defaults(func=run)


def add_job_and_devices(parser: argparse.ArgumentParser) -> None:
    """The job file and the cluster shape to plan it for instead of its spec's."""
    parser.add_argument("file", metavar="JOB.yaml", help="job manifest ('-' reads standard input)")
    parser.add_argument("--gpus", type=_positive, help="plan for this many GPUs instead")
    parser.add_argument("--gpus-per-node", type=_positive, help="GPUs per node")
    parser.add_argument("--gpu-type", help="device profile (H100, H200, A100-80GB, L40S, cpu, ...)")


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _gib(n: float) -> str:
    return f"{n / GiB:.1f}"


MEMORY_TERMS = (
    "weights",
    "optimizer",
    "gradients",
    "activations",
    "logits",
    "kv_cache",
    "communication",
    "other",
)


def _memory_table(plan: Plan) -> list[str]:
    """Each call's planned peak per device by term (GiB): what the workers allocate."""
    if not any(c.memory_breakdown for c in plan.calls):
        return []  # a plan written before the breakdown existed
    rows: list[tuple[str, ...]] = [("memory GiB", *MEMORY_TERMS, "peak")]
    for c in plan.calls:
        terms = c.memory_breakdown
        rows.append((c.name, *(_gib(terms.get(t, 0)) for t in MEMORY_TERMS), _gib(c.memory_bytes)))
    return ["", *_columns(rows)]


def render_table(plan: Plan) -> str:
    what = "CPU slots" if plan.gpu_type.lower() == "cpu" else f"{plan.gpu_type} GPUs"
    lines = [
        f"RLHFJob/{plan.job}: {plan.algorithm}, {plan.strategy} plan on {plan.nodes} node(s) x "
        f"{plan.gpus_per_node} {what} (planned in {plan.search_seconds:.1f} s)",
        "",
    ]
    rows: list[tuple[str, ...]] = [
        ("call", "role", "mesh", "devices", "dp", "tp", "pp", "micro", "time s", "mem GiB")
    ]
    for c in plan.calls:
        micro = f"{c.micro_batches}{'+rc' if c.recompute else ''}"
        micro += "+z2" if c.zero_stage == 2 else ""
        rows.append(
            (c.name, c.role, c.mesh_spec, str(len(c.mesh)), str(c.dp), str(c.tp), str(c.pp),
             micro, f"{c.seconds:.2f}", _gib(c.memory_bytes))
        )  # fmt: skip
    lines += _columns(rows)
    lines += _memory_table(plan)
    if plan.reallocations:
        lines.append("")
        rows = [("reallocation", "from", "to", "GiB moved", "time s")]
        rows += [
            (r.role, r.from_call, r.to_call, _gib(r.bytes), f"{r.seconds:.3f}")
            for r in plan.reallocations
        ]
        lines += _columns(rows)
    if plan.offloads:
        lines.append("")
        rows = [("offloaded", "reloaded for", "GiB/device", "time s")]
        rows += [(o.role, o.call, _gib(o.bytes), f"{o.seconds:.3f}") for o in plan.offloads]
        lines += _columns(rows)
    lines += [
        "",
        f"iteration {plan.iteration_seconds:.2f} s, {plan.tokens_per_second:,.0f} tokens/s, "
        f"{plan.pflops:.3f} PFLOP/s",
        "",
    ]
    rows = [("plan", "iteration s", "PFLOP/s", "this plan is")]
    rows.append((plan.strategy, f"{plan.iteration_seconds:.2f}", f"{plan.pflops:.3f}", ""))
    for name, secs in plan.baselines.items():
        if name == plan.strategy:
            continue
        if secs is None:
            rows.append((name, "does not fit", "-", "-"))
        else:
            pf = plan.flops_per_iteration / secs / 1e15
            speedup = secs / plan.iteration_seconds
            rows.append((name, f"{secs:.2f}", f"{pf:.3f}", f"{speedup:.2f}x faster"))
    lines += _columns(rows)
    lines.append("(estimates: full-length sequences, the device profile's speeds)")
    return "\n".join(lines)


def _columns(rows: list[tuple[str, ...]]) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    out = []
    for row in rows:
        cells = [
            cell.ljust(w) if i == 0 or not _numeric(cell) else cell.rjust(w)
            for i, (cell, w) in enumerate(zip(row, widths, strict=True))
        ]
        out.append("  ".join(cells).rstrip())
    return out


def _numeric(cell: str) -> bool:
    return cell[:1].isdigit()


def run(args: argparse.Namespace) -> int:
    jobs, problems = load_jobs(args.file)
    for p in problems:
        print(str(p), file=sys.stderr)
    if problems:
        return 1
    plans: list[Plan] = []
    code = 0
    for job in jobs:
        who = f"{args.file}: RLHFJob/{job.metadata.name}"
        try:
            plan = plan_job(
                job,
                gpus=args.gpus,
                gpus_per_node=args.gpus_per_node,
                gpu_type=args.gpu_type,
                seed=args.seed,
                search_seconds=args.search_seconds,
            )
        except InfeasibleError as exc:
            print(f"{who}: {one_line(str(exc))}", file=sys.stderr)
            code = 1
            continue
        except (PlanError, ProfileError) as exc:
            print(f"{who}: {one_line(str(exc))}", file=sys.stderr)
            code = 1
            continue
        plans.append(plan)
        if args.format == "table":
            if len(plans) > 1:
                print()
            print(render_table(plan))
    if args.format == "json" and plans:
        data = plans[0].to_dict() if len(jobs) == 1 else [p.to_dict() for p in plans]
        print(json.dumps(data, indent=2))
    return code
