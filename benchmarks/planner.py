"""The planner on ReaL's weak-scaling grid, on paper (estimates, H100 profile).

Scenarios: PPO with actor, critic, reference and reward models of the same
size (LLaMA-2 7B/13B/CodeLlama-34B/LLaMA-2 70B) on 8/16/32/64 GPUs (8 per
node), prompt 128, generation 128/384/896, batch x (prompt + generation) =
2^17 tokens, 4 PPO minibatches; 70B on 128 GPUs; and long-context cases
(prompt and generation of 2048 or more). For each: the estimated PFLOP/s of
each baseline and of the searched plan, searched / best baseline, and the
search time.

    python benchmarks/planner.py            # the whole grid
    python benchmarks/planner.py --quick    # two scenarios
    python benchmarks/planner.py --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import dataclass

from rlhf_operator.api.job import RLHFJob
from rlhf_operator.planner import plan_job
from rlhf_operator.planner.cluster import Mesh
from rlhf_operator.planner.estimator import layouts_for
from rlhf_operator.planner.planning import cluster_for
from rlhf_operator.planner.simulate import Evaluator
from rlhf_operator.planner.workload import workload_for

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
        return TOKENS // (self.prompt + self.gen)


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


def critical_path_bound(job: RLHFJob) -> float:
    """A lower bound on any plan's iteration seconds under the estimator.

    Every iteration runs actor_gen -> the calls actor_train needs -> actor_train, and the next
    actor_gen waits for actor_train (its new weights): that chain is serial. Each call takes at
    least its fastest time on any mesh and layout (memory ignored), and calls that may overlap
    still need their device-seconds: sum over them of min(mesh size x seconds) / devices.
    Reallocations, offloads and the other calls (critic_train may hide under the next
    generation) are left out, so the bound is optimistic: no plan can beat it.
    """
    w = workload_for(job)
    cluster = cluster_for(job, None, None, None)
    ev = Evaluator(w, cluster)
    sizes: dict[int, Mesh] = {}
    for mesh in cluster.meshes():
        sizes.setdefault(mesh.size, mesh)
    fastest: dict[str, float] = {}
    device_seconds: dict[str, float] = {}
    for call in w.calls:
        for size, mesh in sizes.items():
            for lay in layouts_for(w, call, cluster, mesh):
                secs = ev.cost(call, mesh, lay).seconds
                fastest[call.name] = min(fastest.get(call.name, secs), secs)
                work = size * secs
                device_seconds[call.name] = min(device_seconds.get(call.name, work), work)
    train = next(c.name for c in w.calls if c.kind == "train" and c.role == "actor")
    gen = next(c.name for c in w.calls if c.kind == "generate")
    middle = [d for d in w.deps[train] if d != gen]
    overlap = max(
        max((fastest[c] for c in middle), default=0.0),
        sum(device_seconds[c] for c in middle) / cluster.devices,
    )
    return fastest[gen] + overlap + fastest[train]


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
    print("bound = the most any plan could reach over the best baseline (critical_path_bound)")
    print(header)
    rows = []
    for s in todo:
        t0 = time.monotonic()
        plan = plan_job(job_for(s), search_seconds=args.budget, seed=0)
        wall = time.monotonic() - t0
        flops = plan.flops_per_iteration
        base = {k: (flops / v / 1e15 if v else None) for k, v in plan.baselines.items()}
        best = max((v for v in base.values() if v is not None), default=None)
        ratio = plan.pflops / best if best else None
        vs_heur = plan.pflops / base["heuristic"] if base["heuristic"] else None
        best_seconds = min((v for v in plan.baselines.values() if v), default=None)
        bound = best_seconds / critical_path_bound(job_for(s)) if best_seconds else None
        rows.append(
            {
                "scenario": s.name,
                "long_context": s.long_context,
                "baselines_pflops": base,
                "searched_pflops": plan.pflops,
                "ratio": ratio,
                "ratio_vs_heuristic": vs_heur,
                "ratio_bound": bound,
                "iteration_seconds": plan.iteration_seconds,
                "search_seconds": wall,
            }
        )
        print(
            f"{s.name:34} {fmt(base['colocated'])} {fmt(base['split'])} {fmt(base['heuristic'])} "
            f"{plan.pflops:6.2f} {fmt(ratio)} {fmt(vs_heur)} {fmt(bound)} "
            f"{plan.iteration_seconds:7.2f} {wall:8.2f}",
            flush=True,
        )
    ratios = [r["ratio"] for r in rows if r["ratio"] is not None]
    long_ratios = [r["ratio"] for r in rows if r["ratio"] is not None and r["long_context"]]
    worse = [r["scenario"] for r in rows if r["ratio"] is not None and r["ratio"] < 1 - 1e-9]
    slowest = max(r["search_seconds"] for r in rows)
    print()
    print(
        f"searched / best baseline: mean {sum(ratios) / len(ratios):.2f}x, min {min(ratios):.2f}x"
    )
    if long_ratios:
        print(f"long context: mean {sum(long_ratios) / len(long_ratios):.2f}x (target >= 1.3x)")
        bounds = [r["ratio_bound"] for r in rows if r["long_context"] and r["ratio_bound"]]
        if bounds:
            print(
                f"long context: the most any plan could reach, mean {sum(bounds) / len(bounds):.2f}x"
            )
        vs_h = [
            r["ratio_vs_heuristic"] for r in rows if r["long_context"] and r["ratio_vs_heuristic"]
        ]
        if vs_h:
            print(
                f"long context vs the heuristic (ReaL's comparison): mean {sum(vs_h) / len(vs_h):.2f}x"
            )
    print(f"searched worse than a baseline: {', '.join(worse) or 'none'}")
    print(f"slowest search: {slowest:.1f} s (target < 10 s)")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump(rows, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
