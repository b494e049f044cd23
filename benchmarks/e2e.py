"""End-to-end throughput of the tiny GRPO job, against TRL's GRPO trainer, in one run.

    .venv/bin/python benchmarks/e2e.py [--iterations 6] [--prompts 8] [--group 4] [--tokens 16]

Both sides train the same tiny Llama (the `tiny` preset, random weights from
seed 0, the same locally trained tokenizer) on the same prompts
(examples/data/prompts.jsonl) with the same group size, generation length and
reward (rlhf_worker.rewards:vowel_fraction). Ours runs in local mode on 2 CPU
worker processes (one thread each); TRL's trainer runs in this process with
the same two threads. Figures are medians over iterations after the first
(which pays for warm-up on both sides).

It prints samples/s and tokens/s of each, the ratio ours/TRL, and each call's
measured seconds next to the planner's estimate with the median relative error.
Needs the benchmark extra (TRL): `.venv/bin/pip install -c constraints.txt '.[bench]'`.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
PROMPTS = ROOT / "examples" / "data" / "prompts.jsonl"


def job_manifest(iterations: int, prompts: int, group: int, tokens: int) -> dict[str, Any]:
    model = {
        "source": {"tiny": {"seed": 0}},
        "architecture": {"preset": "tiny"},
        "dtype": "float32",
    }
    return {
        "apiVersion": "rlhf.dev/v1alpha1",
        "kind": "RLHFJob",
        "metadata": {"name": "bench-grpo"},
        "spec": {
            "models": {
                "actor": model,
                "ref": model,
                "reward": {"rewardFunction": "rlhf_worker.rewards:vowel_fraction"},
            },
            "algorithm": {"name": "grpo", "grpo": {"groupSize": group, "klCoef": 0.04}},
            "rollout": {"maxNewTokens": tokens, "temperature": 1.0},
            "data": {
                "prompts": {"path": str(PROMPTS)},
                "batchSize": prompts,
                "maxPromptLength": 32,
            },
            "training": {"iterations": iterations, "minibatches": 1, "actorLearningRate": 1e-5},
            "resources": {"local": {"slots": 2}},
            "placement": {"strategy": "search", "searchSeconds": 2},
            "checkpoint": {"interval": 1000},
        },
    }


def run_ours(manifest: dict[str, Any], workdir: Path) -> dict[str, Any]:
    from rlhf_operator.api.manifests import load_jobs
    from rlhf_operator.coordinator.local import LocalRun
    from rlhf_operator.coordinator.outputs import OutputDir
    from rlhf_operator.planner import plan_job

    path = workdir / "job.yaml"
    path.write_text(yaml.safe_dump(manifest))
    jobs, problems = load_jobs(str(path))
    assert not problems, problems
    plan = plan_job(jobs[0])
    out = OutputDir(workdir / "ours")
    with open(os.devnull, "w") as quiet:
        LocalRun(jobs[0], plan, workdir, out, metrics_port=None, stream=quiet).run()
    records = out.read_metrics()[1:]
    samples = [r["samples_per_second"] for r in records]
    tokens = [r["tokens_per_second"] for r in records]
    calls: dict[str, list[float]] = {}
    estimates: dict[str, float] = {}
    for r in records:
        for name, timing in r["calls"].items():
            calls.setdefault(name, []).append(timing["seconds"])
            estimates[name] = timing["estimated_seconds"]
    return {
        "plan": plan.strategy,
        "seconds": statistics.median(r["seconds"] for r in records),
        "samples_per_second": statistics.median(samples),
        "tokens_per_second": statistics.median(tokens),
        "calls": {n: (statistics.median(v), estimates[n]) for n, v in calls.items()},
    }


def run_trl(
    iterations: int, prompts: int, group: int, tokens: int, workdir: Path
) -> dict[str, Any]:
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from rlhf_worker.model.tiny import build_tiny
    from rlhf_worker.rewards import vowel_fraction

    torch.set_num_threads(2)
    model_dir = build_tiny(workdir / "trl-model", seed=0)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    texts = [json.loads(line)["prompt"] for line in PROMPTS.read_text().splitlines()]
    dataset = Dataset.from_list([{"prompt": t} for t in texts])

    def reward(completions: list[str], prompts: list[str], **_: Any) -> list[float]:
        return [vowel_fraction(p, c) for p, c in zip(prompts, completions, strict=True)]

    step_times: list[float] = []
    completion_tokens: list[float] = []

    class Timer(TrainerCallback):  # type: ignore[misc]
        def on_step_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            self.started = time.perf_counter()

        def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            step_times.append(time.perf_counter() - self.started)

        def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kw: Any) -> None:
            if logs and "completions/mean_length" in logs:
                completion_tokens.append(float(logs["completions/mean_length"]))

    config = GRPOConfig(
        output_dir=str(workdir / "trl"),
        per_device_train_batch_size=prompts * group,
        num_generations=group,
        max_completion_length=tokens,
        max_steps=iterations,
        learning_rate=1e-5,
        beta=0.04,
        temperature=1.0,
        use_cpu=True,
        report_to=[],
        logging_steps=1,
        save_strategy="no",
        bf16=False,
        seed=1,
    )
    trainer = GRPOTrainer(
        model=AutoModelForCausalLM.from_pretrained(model_dir),
        reward_funcs=reward,
        args=config,
        train_dataset=dataset,
        processing_class=tokenizer,
        callbacks=[Timer()],
    )
    trainer.train()
    seconds = statistics.median(step_times[1:])
    samples = prompts * group
    prompt_tokens = statistics.mean(len(tokenizer(t).input_ids) for t in texts)
    per_sample = prompt_tokens + (
        statistics.median(completion_tokens) if completion_tokens else tokens
    )
    return {
        "seconds": seconds,
        "samples_per_second": samples / seconds,
        "tokens_per_second": samples * per_sample / seconds,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=6)
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--group", type=int, default=4)
    parser.add_argument("--tokens", type=int, default=16)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        manifest = job_manifest(args.iterations, args.prompts, args.group, args.tokens)
        ours = run_ours(manifest, workdir)
        trl = run_trl(args.iterations, args.prompts, args.group, args.tokens, workdir)
    print(
        f"tiny GRPO: {args.prompts} prompts x {args.group} samples x {args.tokens} new tokens, "
        f"{args.iterations} iterations (medians after the first), 2 CPU workers"
    )
    print(f"{'':14}{'s/iteration':>12}{'samples/s':>11}{'tokens/s':>10}")
    for name, r in (("rlhf-operator", ours), ("TRL GRPO", trl)):
        print(
            f"{name:14}{r['seconds']:12.3f}{r['samples_per_second']:11.2f}{r['tokens_per_second']:10.1f}"
        )
    print(
        f"ratio ours/TRL (samples/s): {ours['samples_per_second'] / trl['samples_per_second']:.2f}"
        "  (target >= 1.0)"
    )
    print(f"\nper-call seconds, measured vs estimated ({ours['plan']} plan, cpu profile)")
    errors = []
    for name, (measured, estimated) in ours["calls"].items():
        error = abs(estimated - measured) / measured
        errors.append(error)
        print(f"  {name:18}{measured:9.3f}{estimated:9.3f}  error {error:6.1%}")
    print(f"median estimator error: {statistics.median(errors):.1%}  (target <= 25%)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
