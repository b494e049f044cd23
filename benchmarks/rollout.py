"""Rollout throughput of vLLM against the torch generator, and in-place weight updates.

    .venv-vllm/bin/python benchmarks/rollout.py [--prompts 32] [--new-tokens 64] [--small]
    python benchmarks/rollout.py --device cuda --dtype bfloat16   # on a GPU, CUDA vLLM

One Llama-shaped model built locally (random float32 weights, GQA; head_dim 64,
which vLLM's CPU attention wants) and one set of prompts (random token ids,
8-24 tokens, a fixed seed). In one run it prints:

* rollout tokens/s of the torch generator (``rlhf_worker.engine.generate``, the
  whole batch at once, greedy, no EOS so every sequence runs to the end) and of
  a vLLM engine on the same weights and prompts (greedy, ``max_tokens`` fixed);
  how many sequences came out identical (a sanity check, not a timing);
* weight updates into the running engine (``VllmEngine.update_weights``: the
  parameters pushed through ``collective_rpc`` in buckets and reloaded in
  place) for several bucket sizes: seconds (median of ``--repeats``), GB/s
  against the model's bytes.

vLLM's engine start (tens of seconds here) is printed, not counted. The
machine is shared: compare the lines of one run, not runs with each other.
Needs vllm (``.venv-vllm``, see the vllm make target). Sample output
(``--prompts 16 --new-tokens 32``; 2-core machine, load average ~8 from other
jobs; vLLM's log lines left out):

    model: 8.0M params, 32 MB float32; 16 prompts x 32 new tokens, greedy; torch threads 1, 2 cpus
    torch generator      512 tokens     1.04 s     492.2 tok/s
    vllm engine start 62.8 s (not counted)
    vllm                 512 tokens     1.46 s     351.7 tok/s  (0.71x torch; 16/16 sequences identical)
    weight update of 32 MB (median of 3):
      bucket    1 MB   27 buckets   0.364 s   0.09 GB/s
      bucket   16 MB    2 buckets   0.274 s   0.12 GB/s
      bucket  256 MB    1 buckets   0.251 s   0.13 GB/s

Reading it: on CPU at this size a vLLM decode step is mostly fixed cost (its
scheduler and the hop to its worker process), so the torch generator with one
thread is as fast or faster; an earlier run with ``--threads 2`` (the default
torch threads) showed vLLM 10x faster, but that was the torch generator's two
OpenMP threads spinning against the other jobs on 2 cores, not vLLM. A weight
update is also a fixed cost more than a bandwidth one here: a few
``collective_rpc`` round trips (pickled through vLLM's shared-memory queue) and
vLLM re-packing every linear weight for its CPU GEMM kernel. vLLM logs
"RotaryEmbedding: Failed to load weights" on each update: the rotary cache is
no checkpoint weight, and vLLM puts its own tensor back.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch


def build(root: Path, small: bool) -> Path:
    """The vLLM-sized tiny model the tests run (``--small``), or a ~10M-parameter one."""
    from rlhf_worker.model.tiny import VLLM, build_tiny_model, build_tokenizer, tiny_hf_config

    bigger = {"intermediate_size": 1024, "num_hidden_layers": 6, "vocab_size": 4096}
    config = tiny_hf_config(**VLLM) if small else tiny_hf_config(**{**VLLM, **bigger})
    build_tiny_model(root, config, seed=0)
    build_tokenizer(root, vocab_size=int(config["vocab_size"]))
    return root


def prompts_for(count: int, vocab: int, seed: int = 0) -> list[list[int]]:
    gen = torch.Generator().manual_seed(seed)
    lengths = torch.randint(8, 25, (count,), generator=gen)
    return [[1, *torch.randint(3, vocab, (int(n) - 1,), generator=gen).tolist()] for n in lengths]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--small", action="store_true", help="a 2-layer model (quick check)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (local mode: 1)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    parser.add_argument(
        "--engine-gib", type=float, default=16.0, help="cuda: the engine's memory (a plan's budget)"
    )
    args = parser.parse_args()
    torch.manual_seed(0)
    # One thread, as a local-mode worker slot runs: on a shared 2-core machine two
    # spinning OpenMP threads slow the torch generator several-fold (measured 10x).
    torch.set_num_threads(args.threads)

    from rlhf_operator.contract.sharding import Layout
    from rlhf_worker.engine import GenerationConfig, generate
    from rlhf_worker.model import load_decoder
    from rlhf_worker.rollout.engine import VllmEngine
    from rlhf_worker.rollout.settings import EngineSettings
    from rlhf_worker.rollout.weights import buckets, named_tensors, total_bytes

    with tempfile.TemporaryDirectory(prefix="rollout-bench-") as tmp:
        root = build(Path(tmp), args.small)
        dtype = getattr(torch, args.dtype)
        model = load_decoder(root, Layout(ranks=(0,)), 0, dtype=dtype).to(args.device)
        named = named_tensors(model.local_state())
        device = model.device

        def synchronized() -> float:  # CUDA runs asynchronously: wait before reading a clock
            if device.type == "cuda":
                torch.cuda.synchronize()
            return time.perf_counter()

        nbytes = total_bytes(named)
        params = sum(t.numel() for _, t in named)
        prompts = prompts_for(args.prompts, model.config.shape.vocab_size)
        steps = args.new_tokens
        print(
            f"model: {params / 1e6:.1f}M params, {nbytes / 1e6:.0f} MB {args.dtype} on {device}; "
            f"{len(prompts)} prompts x {steps} new tokens, greedy; "
            f"torch threads {torch.get_num_threads()}, {os.cpu_count()} cpus"
        )

        generate(model, prompts[:2], GenerationConfig(2))  # warm-up (CUDA: kernels, cuBLAS)
        start = synchronized()
        ref = generate(model, prompts, GenerationConfig(steps))
        torch_s = synchronized() - start
        tokens = int(ref.lengths.sum())
        print(
            f"torch generator   {tokens:6d} tokens {torch_s:8.2f} s {tokens / torch_s:9.1f} tok/s"
        )

        start = time.perf_counter()
        memory = int(args.engine_gib * 2**30) if device.type == "cuda" else 0
        settings = EngineSettings(max_model_len=32 + steps, dtype=args.dtype, memory_bytes=memory)
        engine = VllmEngine(root, settings, device)
        print(f"vllm engine start {time.perf_counter() - start:.1f} s (not counted)")
        engine.update_weights(buckets(named))  # the same weights as the torch model, as in a job
        spec = GenerationConfig(steps, True, 1.0, 1.0, None, 0, 0)
        engine.generate(prompts[:2], spec, [0, 1], device)  # warm-up
        start = time.perf_counter()
        out = engine.generate(prompts, spec, range(len(prompts)), device)
        vllm_s = time.perf_counter() - start
        vtokens = int(out.lengths.sum())
        same = sum(bool(torch.equal(out.tokens[i], ref.tokens[i])) for i in range(len(prompts)))
        print(
            f"vllm              {vtokens:6d} tokens {vllm_s:8.2f} s {vtokens / vllm_s:9.1f} tok/s"
            f"  ({vtokens / vllm_s / (tokens / torch_s):.2f}x torch; "
            f"{same}/{len(prompts)} sequences identical)"
        )

        print(f"weight update of {nbytes / 1e6:.0f} MB (median of {args.repeats}):")
        for bucket_mb in (1, 16, 256):
            times, count = [], 0
            for _ in range(args.repeats):
                stats = engine.update_weights(buckets(named, bucket_mb * 1024 * 1024))
                times.append(stats.seconds)
                count = stats.buckets
            median = statistics.median(times)
            print(
                f"  bucket {bucket_mb:4d} MB {count:4d} buckets {median:7.3f} s "
                f"{nbytes / median / 1e9:6.2f} GB/s"
            )
        engine.close()


if __name__ == "__main__":  # vLLM starts processes: keep the guard
    main()
