"""Measured vs estimated peak memory per rank, for every call and layout printed.

Each layout runs in its own world of gloo processes on CPU (one per rank). A rank
loads its shards of a model, then measures (``rlhf_worker.runtime.memory``: every
live CPU tensor storage, the same quantity as ``torch.cuda.max_memory_allocated``
on a GPU) the peak of:

- ``generate``: the torch engine generating the second half of each sequence from
  its first half (greedy, no EOS: every sequence runs to full length), one
  micro-batch after another as the runtime does;
- ``inference``: a forward pass for log-probabilities over its dp share of the batch;
- ``train``: an optimizer step on that share (the second one, so that the AdamW
  moments exist, as they do in every step of a job but the first).

The estimate is the planner's (``planner.estimator.call_cost``) for the same call,
workload and strategy: the role's weights, optimizer state and the call's
transients. Printed per call: the largest measured peak over the ranks, the
estimate (its largest stage), their ratio, and the estimate's terms.

Then, estimator only: the per-GPU memory of Llama-2-7B on 8 H100s and Llama-2-70B on
64 H100s under the plans the planner searches for the examples' PPO jobs.

    .venv/bin/python benchmarks/memory.py            # tiny and ~100M models
    .venv/bin/python benchmarks/memory.py --quick    # tiny only
    .venv/bin/python benchmarks/memory.py --device cuda   # on GPUs (NCCL)
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import Tensor

from rlhf_operator.api.dataflow import Call
from rlhf_operator.api.models import ArchitectureConfig
from rlhf_operator.contract.sharding import Layout
from rlhf_operator.planner.cluster import Cluster, Mesh
from rlhf_operator.planner.estimator import Strategy, call_cost
from rlhf_operator.planner.profiles import load_profile
from rlhf_operator.planner.workload import RoleModel, Workload

MiB = 2**20
GiB = 2**30
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
TRAIN = Call("actor_train", "actor", "train", ("responses",), ())
INFER = Call("actor_inf", "actor", "inference", ("responses",), ("logprobs",))
GENERATE = Call("actor_gen", "actor", "generate", ("prompts",), ("responses",))
CALLS = {"generate": GENERATE, "inference": INFER, "train": TRAIN}


@dataclass(frozen=True)
class Model:
    name: str
    config: dict[str, Any]  # Hugging Face config.json changes to the tiny preset
    batch: int  # sequences per call
    seq_len: int


MODELS = [
    Model("tiny", {}, batch=8, seq_len=64),
    Model(
        "100M",
        {
            "hidden_size": 768,
            "intermediate_size": 2048,
            "num_hidden_layers": 8,
            "num_attention_heads": 12,
            "num_key_value_heads": 12,
            "vocab_size": 32000,
        },
        batch=4,
        seq_len=128,
    ),
]


@dataclass(frozen=True)
class Case:
    """A layout and a strategy: (dp, tp, pp, micro-batches, recomputation, ZeRO stage)."""

    name: str
    strategy: Strategy

    @property
    def layout(self) -> Layout:
        s = self.strategy
        return Layout(ranks=tuple(range(s.dp * s.tp * s.pp)), pp=s.pp, dp=s.dp, tp=s.tp)


CASES = [
    Case("dp1", Strategy(1, 1, 1, 1)),
    Case("dp1 m4", Strategy(1, 1, 1, 4)),
    Case("dp1 rc", Strategy(1, 1, 1, 1, recompute=True)),
    Case("dp2", Strategy(2, 1, 1, 1)),
    Case("dp2 zero2", Strategy(2, 1, 1, 1, zero_stage=2)),
    Case("tp2", Strategy(1, 2, 1, 1)),
    Case("pp2 m4", Strategy(1, 1, 2, 4)),
    Case("pp2 m4 rc", Strategy(1, 1, 2, 4, recompute=True)),
]


def batch_for(model: Model) -> dict[str, Tensor]:
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(3, 256, (model.batch, model.seq_len), generator=gen)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


def loss(logprobs: Tensor, mb: Mapping[str, Tensor]) -> Tensor:
    return -logprobs.float().mean()


def measure(
    rank: int, model_dir: Path, model: Model, case: Case, dtype: str, device: str
) -> dict[str, int]:
    """This rank's peaks of generation, inference and a training step under the case's layout."""
    from rlhf_worker.engine import (
        GenerationConfig,
        OptimizerConfig,
        Trainer,
        forward_logprobs,
        generate,
    )
    from rlhf_worker.model import Decoder, load_shards
    from rlhf_worker.parallel.data import dp_slice
    from rlhf_worker.parallel.groups import context_for
    from rlhf_worker.runtime.memory import measure_peak

    s, layout = case.strategy, case.layout
    ctx = context_for(layout, rank)
    config, shards = load_shards(model_dir, layout, rank, dtype=DTYPES[dtype])
    where = torch.device("cuda", rank) if device == "cuda" else torch.device("cpu")
    decoder = Decoder(config, ctx, {k: v.to(where) for k, v in shards.items()})
    del shards
    rows = dp_slice(model.batch, s.dp, ctx.dp_rank)
    batch = {k: v[rows].to(where) for k, v in batch_for(model).items()}
    half = model.seq_len // 2
    prompts = [row[:half].tolist() for row in batch["input_ids"]]
    config = GenerationConfig(max_new_tokens=model.seq_len - half)
    with measure_peak(where) as generation:
        # One micro-batch after another, as the runtime's torch generation runs.
        outputs = []
        for part in torch.tensor_split(torch.arange(len(prompts)), s.micro_batches):
            outputs.append(generate(decoder, [prompts[i] for i in part.tolist()], config))
    with measure_peak(where) as inference:
        forward_logprobs(decoder, batch, s.micro_batches)
    trainer = Trainer(decoder, OptimizerConfig(lr=1e-5))
    for _ in range(2):
        with measure_peak(where) as train:
            trainer.step(batch, loss, s.micro_batches, s.recompute, s.zero_stage == 2)
    return {"generate": generation.peak, "inference": inference.peak, "train": train.peak}


def _rank(rank: int, world: int, port: int, jobs: list[Any], out: str) -> None:
    os.environ["GLOO_SOCKET_IFNAME"] = "lo"
    torch.set_num_threads(1)
    cuda = jobs[0][-1] == "cuda"
    if cuda:
        torch.cuda.set_device(rank)
    dist.init_process_group(
        "nccl" if cuda else "gloo",
        init_method=f"tcp://127.0.0.1:{port}",
        rank=rank,
        world_size=world,
        device_id=torch.device("cuda", rank) if cuda else None,
    )
    results = [measure(rank, *job) for job in jobs]
    Path(out, f"{rank}.json").write_text(json.dumps(results))
    dist.barrier()
    dist.destroy_process_group()


def run_world(world: int, jobs: list[Any]) -> list[list[dict[str, int]]]:
    """Every job on one world of `world` ranks: per job, each rank's peaks."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with tempfile.TemporaryDirectory() as out:
        mp.start_processes(_rank, args=(world, port, jobs, out), nprocs=world, start_method="spawn")
        per_rank = [json.loads(Path(out, f"{r}.json").read_text()) for r in range(world)]
    return [[per_rank[r][j] for r in range(world)] for j in range(len(jobs))]


def estimate(model: Model, arch: ArchitectureConfig, case: Case, dtype: str) -> dict[str, Any]:
    """The planner's peak bytes per device for both calls, with their terms."""
    b = 4 if dtype == "float32" else 2
    roles = {"actor": RoleModel("actor", arch, b, trainable=True)}
    half = model.seq_len // 2
    w = Workload(
        "bench", "grpo", roles, tuple(CALLS.values()), {}, model.batch, half, model.seq_len - half
    )
    size = case.layout.size
    cluster, mesh = Cluster(1, size, load_profile("cpu")), Mesh(0, size)
    out: dict[str, Any] = {}
    for kind, call in CALLS.items():
        strategy = case.strategy
        if kind != "train":
            strategy = Strategy(strategy.dp, strategy.tp, strategy.pp, strategy.micro_batches)
        cost = call_cost(w, call, cluster, mesh, strategy)
        terms = {"weights": cost.weight_bytes, "optimizer": cost.state_bytes, **cost.breakdown}
        out[kind] = (cost.memory_bytes, terms)
    return out


def measured_table(models: list[Model], cases: list[Case], device: str) -> list[str]:
    from rlhf_worker.model import read_config
    from rlhf_worker.model.tiny import build_tiny_model, tiny_hf_config

    lines = [
        f"{'model':<6} {'layout':<10} {'dtype':<8} {'call':<9} {'measured MiB':>12} "
        f"{'estimated MiB':>13} {'ratio':>6}   estimate's terms (MiB)"
    ]
    ratios = []
    with tempfile.TemporaryDirectory() as tmp:
        for model in models:
            model_dir = Path(tmp, model.name)
            build_tiny_model(model_dir, tiny_hf_config(**model.config))
            arch = ArchitectureConfig.from_hf_config(read_config(model_dir))
            for world in sorted({c.layout.size for c in cases}):
                jobs = [
                    (model_dir, model, c, d, device)
                    for c in cases
                    if c.layout.size == world
                    for d in DTYPES
                ]
                for (_, _, case, dtype, _), peaks in zip(jobs, run_world(world, jobs), strict=True):
                    est = estimate(model, arch, case, dtype)
                    for kind in CALLS:
                        measured = max(p[kind] for p in peaks)
                        estimated, terms = est[kind]
                        ratio = measured / estimated
                        ratios.append(ratio)
                        shown = ", ".join(f"{k} {v / MiB:.1f}" for k, v in terms.items() if v)
                        lines.append(
                            f"{model.name:<6} {case.name:<10} {dtype:<8} {kind:<9} "
                            f"{measured / MiB:>12.1f} {estimated / MiB:>13.1f} {ratio:>6.3f}   {shown}"
                        )
    lines.append(
        f"measured/estimated over {len(ratios)} rows: min {min(ratios):.3f}, "
        f"max {max(ratios):.3f}, median {sorted(ratios)[len(ratios) // 2]:.3f}"
    )
    return lines


def searched_plans() -> list[str]:
    """Estimator only: the examples' 7B and 70B PPO jobs as the planner plans them."""
    from rlhf_operator.api.job import RLHFJob
    from rlhf_operator.planner.planning import plan_job

    lines = []
    root = Path(__file__).resolve().parent.parent / "examples"
    for example in ("llama7b-ppo-8gpu.yaml", "llama70b-ppo-64gpu.yaml"):
        import yaml

        job = RLHFJob.model_validate(yaml.safe_load((root / example).read_text()))
        plan = plan_job(job)
        lines.append(
            f"{example}: {plan.strategy} plan on {plan.nodes} x {plan.gpus_per_node} {plan.gpu_type}"
        )
        for c in plan.calls:
            terms = ", ".join(
                f"{k} {v / GiB:.1f}" for k, v in c.memory_breakdown.items() if v >= GiB / 20
            )
            lay = f"dp{c.dp} tp{c.tp} pp{c.pp} m{c.micro_batches}"
            lay += " rc" if c.recompute else ""
            lay += " zero2" if c.zero_stage == 2 else ""
            lines.append(
                f"  {c.name:<12} {lay:<22} {c.memory_bytes / GiB:>6.1f} GiB per GPU   ({terms})"
            )
    return lines


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="the tiny model only")
    parser.add_argument("--estimates-only", action="store_true", help="skip the measurements")
    parser.add_argument("--layout", default="", help="only the layouts named exactly so")
    parser.add_argument(
        "--device",
        choices=("cpu", "cuda"),
        default="cpu",
        help="cuda: one GPU per rank, NCCL, max_memory_allocated (layouts needing more GPUs "
        "than there are are skipped)",
    )
    args = parser.parse_args(argv)
    if not args.estimates_only:
        models = MODELS[:1] if args.quick else MODELS
        cases = [c for c in CASES if args.layout in ("", c.name)]
        if args.device == "cuda":
            cases = [c for c in cases if c.layout.size <= torch.cuda.device_count()]
        print(f"device: {args.device}")
        print("\n".join(measured_table(models, cases, args.device)))
        print()
    print("\n".join(searched_plans()))


if __name__ == "__main__":
    main(sys.argv[1:])
