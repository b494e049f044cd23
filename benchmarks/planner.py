"""The planner on ReaL's weak-scaling grid, on paper (estimates, H100 profile).

Scenarios: PPO with actor, critic, reference and reward models of the same
size (LLaMA-2 7B/13B/CodeLlama-34B/LLaMA-2 70B) on 8/16/32/64 GPUs (8 per
node), prompt 128, generation 128/384/896, batch x (prompt + generation) =
2^17 tokens, 4 PPO minibatches; 70B on 128 GPUs; and long-context cases
(prompt and generation of 2048 or more). For each: the estimated PFLOP/s of
each baseline and of the searched plan, searched / best baseline, the most any
plan could reach over the best baseline (`iteration_bound`, a lower bound on
the iteration under the same estimator), and the search time. Long-context
rows add where the best baseline's seconds go (generation vs the rest), what
the bound leaves of each, and two layout-independent floors of decoding.

    python benchmarks/planner.py            # the whole grid
    python benchmarks/planner.py --quick    # two scenarios
    python benchmarks/planner.py --json out.json
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
import time
from dataclasses import dataclass

from rlhf_operator.api.job import RLHFJob
from rlhf_operator.planner import InfeasibleError, plan_job
from rlhf_operator.planner.baselines import BASELINES
from rlhf_operator.planner.cluster import Mesh
from rlhf_operator.planner.estimator import strategies_for
from rlhf_operator.planner.planning import cluster_for
from rlhf_operator.planner.simulate import Evaluator
from rlhf_operator.planner.workload import Workload, workload_for

TOKENS = 2**17
SIZES = [("llama2-7b", 8), ("llama2-13b", 16), ("codellama-34b", 32), ("llama2-70b", 64)]


@dataclass
class Scenario:
    name: str
    preset: str
    gpus: int
    prompt: int
    gen: int
    long_context: bool = False
    backend: str = "vllm"

    @property
    def batch(self) -> int:
        """2^17 tokens per batch, rounded down to a power of two sequences (so that the batch
        splits over data-parallel ranks: 10 sequences of 12288 tokens would leave vLLM
        generation no layout on 64 GPUs)."""
        most = TOKENS // (self.prompt + self.gen)
        return 1 << (most.bit_length() - 1)


def scenarios() -> list[Scenario]:
    out = []
    for preset, gpus in SIZES:
        for gen in (128, 384, 896):
            out.append(Scenario(f"{preset}/{gpus}gpu/gen{gen}", preset, gpus, 128, gen))
    for gen in (128, 384, 896):
        out.append(Scenario(f"llama2-70b/128gpu/gen{gen}", "llama2-70b", 128, 128, gen))
    for preset, gpus in SIZES:
        out.append(Scenario(f"{preset}/{gpus}gpu/long2048+2048", preset, gpus, 2048, 2048, True))
    out.append(Scenario("codellama-34b/32gpu/long4096+4096", "codellama-34b", 32, 4096, 4096, True))
    out.append(Scenario("codellama-34b/64gpu/long4096+8192", "codellama-34b", 64, 4096, 8192, True))
    return out


def job_for(s: Scenario) -> RLHFJob:
    model = {"source": {"path": "/models/x"}, "architecture": {"preset": s.preset}}
    return RLHFJob.model_validate(
        {
            "apiVersion": "rlhf.dev/v1alpha1",
            "kind": "RLHFJob",
            "metadata": {"name": "bench"},
            "spec": {
                "models": {"actor": model, "critic": model, "ref": model, "reward": model},
                "algorithm": {"name": "ppo"},
                "rollout": {"backend": s.backend, "maxNewTokens": s.gen},
                "data": {
                    "prompts": {"path": "/data/p.jsonl"},
                    "batchSize": s.batch,
                    "maxPromptLength": s.prompt,
                },
                "training": {"minibatches": 4},
                "resources": {"gpus": s.gpus, "gpusPerNode": 8, "gpuType": "H100"},
                "placement": {"strategy": "search"},
            },
        }
    )


@dataclass
class Bound:
    """A lower bound on any plan's iteration seconds under the estimator, in stages."""

    seconds: float
    stages: list[tuple[list[str], float]]  # the calls of each stage and its least seconds
    fastest: dict[str, float]  # each call's fastest seconds on any mesh and layout that fits


def _stages(w: Workload) -> list[list[str]]:
    """The calls grouped by dependency depth; two consecutive groups are merged unless every
    call of the later one depends (transitively) on every call of the earlier one."""
    above: dict[str, set[str]] = {}
    depth: dict[str, int] = {}
    for c in w.calls:  # the algorithm lists calls in dependency order
        above[c.name] = set(w.deps[c.name]).union(*(above[d] for d in w.deps[c.name]))
        depth[c.name] = 1 + max((depth[d] for d in w.deps[c.name]), default=-1)
    groups: list[list[str]] = []
    for level in range(max(depth.values()) + 1):
        group = [n for n, d in depth.items() if d == level]
        if groups and not all(set(groups[-1]) <= above[n] for n in group):
            groups[-1] += group
        else:
            groups.append(group)
    return groups


def iteration_bound(job: RLHFJob) -> Bound | None:
    """The least iteration seconds any plan could reach under the estimator (None: no call fits).

    Iterations run one after another (the coordinator's barrier), and in PPO every call of a
    stage (generation | reference, reward and critic inference | both trainings) waits for
    every call of the stage before: a plan's iteration is at least the sum over stages of
    the stage's span. A span is at least its slowest call and at least its calls'
    device-seconds over all devices, each call at some mesh size with its fastest layout
    whose own memory fits a device; the bound takes the best choice per stage.
    Reallocations, offloads and the memory the calls share are left out, so no plan can beat
    it, and plans usually stay a few percent above it (the memory they share).
    """
    w = workload_for(job)
    cluster = cluster_for(job, None, None, None)
    ev = Evaluator(w, cluster)
    usable = cluster.profile.usable_memory
    sizes: dict[int, Mesh] = {}
    for mesh in cluster.meshes():
        sizes.setdefault(mesh.size, mesh)
    options: dict[str, list[tuple[int, float]]] = {}  # (mesh size, seconds), Pareto-optimal
    for call in w.calls:
        best: dict[int, float] = {}
        for size, mesh in sizes.items():
            for lay in strategies_for(w, call, cluster, mesh):
                cost = ev.cost(call, mesh, lay)
                if cost.memory_bytes <= usable:
                    best[size] = min(best.get(size, cost.seconds), cost.seconds)
        if not best:
            return None
        pareto: list[tuple[int, float]] = []
        for size, secs in sorted(best.items()):
            if all(secs < other for _, other in pareto):
                pareto.append((size, secs))
        options[call.name] = pareto
    stages = []
    for group in _stages(w):
        span = min(
            max(max(t for _, t in combo), sum(n * t for n, t in combo) / cluster.devices)
            for combo in itertools.product(*(options[c] for c in group))
        )
        stages.append((group, span))
    fastest = {name: min(t for _, t in opts) for name, opts in options.items()}
    return Bound(sum(span for _, span in stages), stages, fastest)


def decode_floor(job: RLHFJob) -> tuple[float, float]:
    """Two layout-independent floors of generation's decode, in seconds.

    Weights: the gen - 1 decode steps run one after another (a token needs the one before),
    and each step reads every weight once for each tensor-parallel group: at most a node's
    devices share that read (tensor parallelism stays inside a node; pipeline stages read
    their layers one after another). KV cache: every byte is read once per step by one
    device, at best spread over all devices.
    """
    w = workload_for(job)
    cluster = cluster_for(job, None, None, None)
    role = w.roles[w.call("actor_gen").role]
    a = role.arch
    assert a is not None
    p, g = w.prompt_len, w.gen_len
    prof = cluster.profile
    bandwidth = prof.memory_bandwidth * prof.backend(w.backend).bandwidth_efficiency
    steps = max(g - 1, 0)
    weights = steps * role.param_bytes / (cluster.per_node * bandwidth)
    per_token = role.layers * 2 * a.kv_heads * a.head_size * role.dtype_bytes
    kv = w.samples * steps * (p + g / 2) * per_token / (cluster.devices * bandwidth)
    return weights, kv


def baseline_split(job: RLHFJob, name: str) -> tuple[float, float] | None:
    """A baseline's generation seconds and the rest of its iteration."""
    w = workload_for(job)
    ev = Evaluator(w, cluster_for(job, None, None, None))
    assign = BASELINES[name](ev)
    got = ev.evaluate(assign) if assign is not None else None
    if got is None:
        return None
    gen = got.costs["actor_gen"].seconds
    return gen, got.iteration_seconds - gen


def fmt(x: float | None) -> str:
    return "   -  " if x is None else f"{x:6.2f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="two scenarios only")
    parser.add_argument("--long", action="store_true", help="the long-context scenarios only")
    parser.add_argument("--budget", type=float, default=10.0, help="search seconds per scenario")
    parser.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    args = parser.parse_args(argv)
    todo = scenarios()
    if args.quick:
        todo = [todo[0], todo[-3]]
    if args.long:
        todo = [s for s in todo if s.long_context]
    print(f"planner benchmark: {len(todo)} scenarios, H100, {os.cpu_count()} cores")
    header = (
        f"{'scenario':34} {'colo':>6} {'split':>6} {'heur':>6} {'search':>6} "
        f"{'ratio':>6} {'/heur':>6} {'bound':>6} {'iter_s':>7} {'search_s':>8}"
    )
    print("PFLOP/s (estimated); ratio = searched / best baseline, /heur = searched / heuristic,")
    print("bound = the most any plan could reach over the best baseline (iteration_bound)")
    print(header)
    rows = []
    for s in todo:
        job = job_for(s)
        t0 = time.monotonic()
        try:
            plan = plan_job(job, search_seconds=args.budget, seed=0)
        except InfeasibleError as exc:
            print(f"{s.name:34} does not fit: {exc}", flush=True)
            continue
        wall = time.monotonic() - t0
        flops = plan.flops_per_iteration
        base = {k: (flops / v / 1e15 if v else None) for k, v in plan.baselines.items()}
        best = max((v for v in base.values() if v is not None), default=None)
        ratio = plan.pflops / best if best else None
        vs_heur = plan.pflops / base["heuristic"] if base["heuristic"] else None
        best_seconds = min((v for v in plan.baselines.values() if v), default=None)
        bound = iteration_bound(job)
        ratio_bound = best_seconds / bound.seconds if best_seconds and bound else None
        rows.append(
            {
                "scenario": s.name,
                "long_context": s.long_context,
                "baselines_pflops": base,
                "searched_pflops": plan.pflops,
                "ratio": ratio,
                "ratio_vs_heuristic": vs_heur,
                "ratio_bound": ratio_bound,
                "bound_seconds": bound.seconds if bound else None,
                "iteration_seconds": plan.iteration_seconds,
                "best_baseline_seconds": best_seconds,
                "search_seconds": wall,
            }
        )
        print(
            f"{s.name:34} {fmt(base['colocated'])} {fmt(base['split'])} {fmt(base['heuristic'])} "
            f"{plan.pflops:6.2f} {fmt(ratio)} {fmt(vs_heur)} {fmt(ratio_bound)} "
            f"{plan.iteration_seconds:7.2f} {wall:8.2f}",
            flush=True,
        )
        if s.long_context and bound and best_seconds:
            rows[-1]["why"] = why_line(job, plan.baselines, bound)
            print(f"{'':4}{rows[-1]['why']}", flush=True)
    summary(rows)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump(rows, fh, indent=1)
    return 0


def why_line(job: RLHFJob, baselines: dict[str, float | None], bound: Bound) -> str:
    """Where the best baseline's seconds go and what the bound leaves of them, in one line."""
    name = min((n for n, v in baselines.items() if v), key=lambda n: baselines[n] or 0.0)
    split = baseline_split(job, name)
    assert split is not None
    gen, rest = split
    gen_least = bound.stages[0][1]
    rest_least = bound.seconds - gen_least
    weights, kv = decode_floor(job)
    return (
        f"{name}: generation {gen:.1f} s ({gen / (gen + rest):.0%}) + rest {rest:.1f} s; "
        f"at best {gen_least:.1f} + {rest_least:.1f} s; decode floors: weights {weights:.1f} s "
        f"+ KV cache {kv:.1f} s"
    )


def summary(rows: list[dict]) -> None:
    ratios = [r["ratio"] for r in rows if r["ratio"] is not None]
    worse = [r["scenario"] for r in rows if r["ratio"] is not None and r["ratio"] < 1 - 1e-9]
    print()
    if ratios:
        print(
            f"searched / best baseline: mean {sum(ratios) / len(ratios):.2f}x, "
            f"min {min(ratios):.2f}x"
        )
    long_rows = [r for r in rows if r["long_context"] and r["ratio"] is not None]
    if long_rows:
        mean = sum(r["ratio"] for r in long_rows) / len(long_rows)
        print(f"long context: mean {mean:.2f}x (target >= 1.3x)")
        bounds = [r["ratio_bound"] for r in long_rows if r["ratio_bound"]]
        if bounds:
            print(
                f"long context: the most any plan could reach, mean {sum(bounds) / len(bounds):.2f}x"
            )
            print(
                "  generation is half or more of a long-context iteration and the best baseline\n"
                "  already generates at (or within a few % of) the fastest any layout allows: its\n"
                "  gen-1 decode steps are sequential and each reads the weights over at most one\n"
                "  node's GPUs (tp <= 8) plus the KV cache (the same bytes whatever the layout);\n"
                "  only the rest of the iteration can shrink, and it is the smaller part"
            )
        gaps = [
            r["iteration_seconds"] / r["bound_seconds"] for r in long_rows if r["bound_seconds"]
        ]
        if gaps:
            print(
                f"long context: searched plans are {sum(gaps) / len(gaps) - 1:.1%} above the bound "
                "on average (reallocations, offloads, memory shared between calls)"
            )
        vs_h = [r["ratio_vs_heuristic"] for r in long_rows if r["ratio_vs_heuristic"]]
        if vs_h:
            print(
                f"long context vs the heuristic (ReaL's comparison): mean {sum(vs_h) / len(vs_h):.2f}x"
            )
    print(f"searched worse than a baseline: {', '.join(worse) or 'none'}")
    if rows:
        print(f"slowest search: {max(r['search_seconds'] for r in rows):.1f} s (target < 10 s)")


if __name__ == "__main__":
    sys.exit(main())
