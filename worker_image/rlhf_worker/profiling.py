"""Measure a device for the planner's profile: `python -m rlhf_worker.profiling`.

The torch side of `rlhfctl profile` (the operator package never imports torch),
which runs this and then calibrates the engine terms from what it measured.
Times, on the local CPU or on a GPU when present: GEMMs at a few token counts
(peak rate and how fast small ones fall off), a whole decoder layer forward and
one decode step (the tiny preset's shapes on CPU, a 7B-like layer on GPU: how
close a layer gets to its GEMMs, and the per-layer overhead of a decode step),
memory bandwidth (a large copy), host<->device copies, a tiny kernel's launch
overhead, and an all-reduce between two processes (gloo on CPU, NCCL across
two GPUs when there are two). It writes a YAML profile in the format of
`rlhf_operator/planner/profiles/*.yaml`, with the raw figures under `measured`
(on CPU also the engine's own timings, `measured.engine`, from which `rlhfctl
profile` then solves the profile's engine terms).

What cannot be measured on one machine is taken from the nearest shipped
assumption and said so in `measured.assumed`: the inter-node link (a CPU
profile uses its intra-node figures; a GPU profile keeps 400 Gb/s per GPU).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

KERNELS_PER_LAYER = 12  # matches the planner's estimator


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time(fn: Callable[[], object], device: torch.device, repeat: int, min_seconds: float) -> float:
    """Fastest seconds of one call of fn (after a warm-up): the least disturbed by other load."""
    fn()
    _sync(device)
    times = []
    deadline = time.perf_counter() + min_seconds
    for i in range(repeat):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
        if i >= 2 and time.perf_counter() > deadline:
            break
    return min(times)


def measure_gemm(device: torch.device, dtype: torch.dtype, quick: bool) -> dict[str, Any]:
    hidden = 1024 if device.type == "cpu" else 8192
    rows = [8, 32, 128, 512, 2048] if device.type == "cpu" else [16, 64, 256, 1024, 4096, 16384]
    if quick:
        rows = rows[::2]
    fns: dict[str, Callable[[], object]] = {}
    repeats = {m: max(1, 2048 // m) for m in rows}  # small GEMMs repeated: timings long enough
    for m in rows:
        a = torch.randn(m, hidden, device=device, dtype=dtype)
        b = torch.randn(hidden, hidden, device=device, dtype=dtype)

        def gemms(a: torch.Tensor = a, b: torch.Tensor = b, n: int = repeats[m]) -> None:
            for _ in range(n):
                a @ b
            _sync(device)

        fns[str(m)] = gemms
    # In turns, medians: the fall-off with rows is a ratio, so all shapes must see the same load.
    seconds = _interleaved_medians(fns, 5 if quick else 11)
    rates = {m: 2 * m * repeats[m] * hidden * hidden / seconds[str(m)] for m in rows}
    peak = max(rates.values())
    # Fit rate(m) = peak * m / (m + half): half = m * (peak / rate - 1), median over shapes.
    halves = [m * (peak / r - 1) for m, r in rates.items() if r < peak]
    half = max(1.0, statistics.median(halves)) if halves else 1.0
    return {"hidden": hidden, "flops_by_rows": rates, "peak": peak, "half_rows": half}


def _layer_weights(
    hidden: int, inter: int, heads: int, kv_heads: int, device: torch.device, dtype: torch.dtype
) -> dict[str, torch.Tensor]:
    hd = hidden // heads

    def w(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, device=device, dtype=dtype) * 0.02

    return {
        "qkv": w(hidden, (heads + 2 * kv_heads) * hd),
        "o": w(heads * hd, hidden),
        "gate_up": w(hidden, 2 * inter),
        "down": w(inter, hidden),
        "norm": torch.ones(hidden, device=device, dtype=dtype),
    }


def _layer(
    x: torch.Tensor,
    wts: dict[str, torch.Tensor],
    heads: int,
    kv_heads: int,
    cache: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> torch.Tensor:
    """One decoder layer (RMSNorm, GQA attention, SwiGLU), the shape of the worker's."""
    b, t, h = x.shape
    hd = h // heads
    n = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-5) * wts["norm"]
    qkv = n @ wts["qkv"]
    q, k, v = qkv.split([heads * hd, kv_heads * hd, kv_heads * hd], dim=-1)
    q = q.view(b, t, heads, hd).transpose(1, 2)
    k = k.view(b, t, kv_heads, hd).transpose(1, 2)
    v = v.view(b, t, kv_heads, hd).transpose(1, 2)
    if cache is not None:  # preallocated: the new token's key/value go into the last slot
        cache[0][:, :, -t:] = k
        cache[1][:, :, -t:] = v
        k, v = cache
    att = torch.nn.functional.scaled_dot_product_attention(
        q, k, v, is_causal=cache is None, enable_gqa=heads != kv_heads
    )
    x = x + att.transpose(1, 2).reshape(b, t, heads * hd) @ wts["o"]
    n = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-5) * wts["norm"]
    gate, up = (n @ wts["gate_up"]).chunk(2, dim=-1)
    return x + (torch.nn.functional.silu(gate) * up) @ wts["down"]


def measure_layers(
    device: torch.device, dtype: torch.dtype, peak: float, half_rows: float, quick: bool
) -> dict[str, Any]:
    """A whole decoder layer, forward and one decode step: how close to the GEMM model it runs.

    Shapes: the `tiny` preset on CPU (what local mode runs), a LLaMA-7B-like layer on GPU.
    Returns the layer efficiency (achieved FLOP/s over the GEMM model's) and the decode
    step's time per layer beyond its compute and memory traffic (launch/dispatch overhead).
    """
    if device.type == "cpu":
        hidden, inter, heads, kv_heads, batch, seq = 256, 512, 8, 4, 16, 128
    else:
        hidden, inter, heads, kv_heads, batch, seq = 4096, 11008, 32, 8, 8, 1024
    if quick:
        seq //= 2
    hd = hidden // heads
    wts = _layer_weights(hidden, inter, heads, kv_heads, device, dtype)
    params = hidden * (heads + 2 * kv_heads) * hd + heads * hd * hidden + 3 * hidden * inter
    x = torch.randn(batch, seq, hidden, device=device, dtype=dtype)
    with torch.no_grad():
        fwd = _time(lambda: _layer(x, wts, heads, kv_heads), device, 10, 0.3)
    tokens = batch * seq
    flops = tokens * (2 * params + 4 * heads * hd * seq / 2)
    model_rate = peak * tokens / (tokens + half_rows)
    efficiency = min(1.0, flops / fwd / model_rate)
    # One decode step against a KV cache of `seq` tokens.
    k = torch.randn(batch, kv_heads, seq + 1, hd, device=device, dtype=dtype)
    cache = (k, k.clone())
    step_x = torch.randn(batch, 1, hidden, device=device, dtype=dtype)
    with torch.no_grad():
        step = _time(lambda: _layer(step_x, wts, heads, kv_heads, cache), device, 20, 0.3)
    return {
        "shape": {"hidden": hidden, "intermediate": inter, "heads": heads, "kv_heads": kv_heads},
        "forward_seconds": fwd,
        "forward_tokens": tokens,
        "efficiency": efficiency,
        "decode_step_seconds": step,
        "decode_batch": batch,
        "decode_context": seq,
        "decode_flops": batch * (2 * params + 4 * heads * hd * seq),
        "decode_bytes": params * x.element_size()
        + 2 * batch * seq * kv_heads * hd * x.element_size(),
    }


def _interleaved_medians(fns: dict[str, Callable[[], object]], repeat: int) -> dict[str, float]:
    """Median seconds of each fn, timed in turns (a, b, c, a, b, c, ...) after one warm-up each.

    The machine is shared: taking turns lets every measurement see the same mix of load, so
    their ratios (backward over forward, a decode step over the forward) hold even when the
    absolute figures drift; medians describe a typical run rather than the luckiest one.
    """
    for fn in fns.values():
        fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeat):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(ts) for name, ts in times.items()}


def measure_engine(quick: bool) -> dict[str, Any]:
    """The worker's own engine on the `tiny` preset in one process (what local mode runs).

    - decode: `engine.generate` with per-sequence sampling at two batch sizes and two step
      counts; the difference of step counts cancels the prefill, so `step_seconds[rows]` is
      one decode step (the layers, the head, sampling with one generator per sequence and
      the loop's bookkeeping);
    - forward: `forward_logprobs` over [rows, prompt + new] (inference calls);
    - train: one `Trainer.step` on that batch and on its first rows (forward, backward,
      gradient norm, AdamW): `train_seconds[rows]`;
    - reward: a reward-function call's work for `n` rows: per row the response's tokens,
      decoding, `rewards:vowel_fraction` (as `runtime.calls._score_with_function`).
    """
    from rlhf_operator.contract.sharding import Layout
    from rlhf_worker.data.prompts import epoch_order
    from rlhf_worker.engine import GenerationConfig, forward_logprobs, generate
    from rlhf_worker.engine.train import OptimizerConfig, Trainer
    from rlhf_worker.model import load_decoder
    from rlhf_worker.model.tiny import build_tiny
    from rlhf_worker.rewards.functions import load_reward_function, score

    # A decode step is the difference of two generations: many turns keep its noise down.
    repeat = 3 if quick else 11
    prompt, new, rows_big, rows_small = 32, 16, 16, 4
    steps_short, steps_long = 2, (6 if quick else 16)
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = build_tiny(f"{tmp}/tiny", seed=0)
        model = load_decoder(model_dir, Layout(ranks=(0,)), 0)
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(model_dir)
    gen = torch.Generator().manual_seed(0)
    fns: dict[str, Callable[[], object]] = {}
    for rows in (rows_small, rows_big):
        prompts: list[list[int]] = torch.randint(3, 512, (rows, prompt), generator=gen).tolist()
        for steps in (steps_short, steps_long):
            config = GenerationConfig(steps, greedy=False, temperature=1.0, seed=0)

            def generation(p: list[list[int]] = prompts, c: GenerationConfig = config) -> None:
                generate(model, p, c, sample_ids=list(range(len(p))))

            fns[f"gen{rows}x{steps}"] = generation
    ids = torch.randint(3, 512, (rows_big, prompt + new), generator=gen)
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    fns["forward"] = lambda: forward_logprobs(model, batch)
    trainer = Trainer(model, OptimizerConfig(lr=0.0))  # lr 0: the weights stay as they are

    def loss(out: torch.Tensor, mb: object) -> torch.Tensor:
        return out.mean()

    fns["train"] = lambda: trainer.step(batch, loss)
    # A smaller step too: what does not grow with the rows (AdamW's Python loop over the
    # parameters, gradient bookkeeping) shows as the intercept.
    small = {k: v[:rows_small] for k, v in batch.items()}
    fns["train_small"] = lambda: trainer.step(small, loss)
    for n in (4, 64):
        sample_ids = torch.randint(3, 512, (n, prompt + new), generator=gen)
        masks = torch.ones_like(sample_ids)

        def scoring(ids: torch.Tensor = sample_ids, mask: torch.Tensor = masks) -> None:
            # What a reward-function call does (runtime.calls._score_with_function): resolve the
            # function, and per row take the response's valid tokens, decode them, score.
            fn = load_reward_function("rlhf_worker.rewards:vowel_fraction")
            texts: list[str] = []
            for row in range(ids.shape[0]):
                # The row's prompt: Runtime.iteration_prompts shuffles the prompt list per
                # prompt (epoch_order); 256 prompts, the example data set's size.
                epoch_order(256, 0, row)
                valid = mask[row, prompt:]
                tokens = ids[row, prompt:][valid.bool()]
                texts.append(str(tokenizer.decode(tokens.tolist(), skip_special_tokens=True)))
            torch.tensor(score(fn, ["a prompt"] * len(texts), texts), dtype=torch.float32)

        fns[f"reward{n}"] = scoring
    # No torch.no_grad() around the forward: the worker's inference calls run without it.
    seconds = _interleaved_medians(fns, repeat)
    step_seconds = {
        rows: max(seconds[f"gen{rows}x{steps_long}"] - seconds[f"gen{rows}x{steps_short}"], 0.0)
        / (steps_long - steps_short)
        for rows in (rows_small, rows_big)
    }
    forward = seconds["forward"]
    train = {rows_small: seconds["train_small"], rows_big: seconds["train"]}
    reward = {n: seconds[f"reward{n}"] for n in (4, 64)}
    return {
        "model": "tiny",
        "prompt": prompt,
        "new_tokens": new,
        "decode_step_seconds": step_seconds,
        "forward_rows": rows_big,
        "forward_seconds": forward,
        "train_seconds": train,
        "reward_seconds": reward,
    }


def measure_bandwidth(device: torch.device, quick: bool) -> float:
    n = (64 if device.type == "cpu" else 1024) * 2**20 // (2 if quick else 1)
    src = torch.empty(n, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    secs = _time(lambda: dst.copy_(src), device, 10, 0.3)
    return 2 * n / secs  # read + write


def measure_host(device: torch.device, quick: bool) -> float:
    if device.type == "cpu":
        return measure_bandwidth(device, quick) / 2
    n = 256 * 2**20
    host = torch.empty(n, dtype=torch.uint8, pin_memory=True)
    dev = torch.empty(n, dtype=torch.uint8, device=device)
    secs = _time(lambda: dev.copy_(host, non_blocking=True), device, 10, 0.3)
    return n / secs


def measure_launch(device: torch.device) -> float:
    x = torch.zeros(1, device=device)

    def many() -> None:
        for _ in range(200):
            x.add_(1.0)

    return _time(many, device, 10, 0.2) / 200


def _allreduce_worker(
    rank: int, world: int, backend: str, init: str, sizes: list[int], out: Any
) -> None:
    if backend == "nccl":
        torch.cuda.set_device(rank)
    dist.init_process_group(backend, init_method=init, rank=rank, world_size=world)
    device = torch.device("cuda", rank) if backend == "nccl" else torch.device("cpu")
    results = {}
    for n in sizes:
        t = torch.ones(max(1, n // 4), dtype=torch.float32, device=device)
        for _ in range(2):
            dist.all_reduce(t)
        _sync(device)
        times = []
        for _ in range(5):
            dist.barrier()
            t0 = time.perf_counter()
            dist.all_reduce(t)
            _sync(device)
            times.append(time.perf_counter() - t0)
        results[n] = statistics.median(times)
    if rank == 0:
        out.put(results)
    dist.destroy_process_group()


def measure_allreduce(device: torch.device, quick: bool) -> dict[str, float] | None:
    """Bus bandwidth and per-step latency of an all-reduce between two processes."""
    backend = "gloo"
    if device.type == "cuda":
        if torch.cuda.device_count() < 2:
            return None
        backend = "nccl"
    big = (16 if quick else 64) * 2**20
    sizes = [4, big]
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    with tempfile.TemporaryDirectory() as tmp:
        init = f"file://{tmp}/rendezvous"
        ctx = mp.get_context("spawn")
        queue = ctx.Queue()
        procs = [
            ctx.Process(target=_allreduce_worker, args=(r, 2, backend, init, sizes, queue))
            for r in range(2)
        ]
        for p in procs:
            p.start()
        try:
            results = queue.get(timeout=300)
        finally:
            for p in procs:
                p.join(timeout=60)
    n = 2
    bus = 2 * (n - 1) / n * big / results[big]
    latency = results[4] / 2  # 2 x log2(2) steps
    return {"bus_bandwidth": bus, "latency": latency}


def measure(device_name: str, name: str | None, slots: int, quick: bool) -> dict[str, Any]:
    if device_name == "auto":
        device_name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(device_name)
    if device.type == "cpu":
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // max(1, slots)))
    dtype = torch.float32 if device.type == "cpu" else torch.bfloat16
    gemm = measure_gemm(device, dtype, quick)
    bandwidth = measure_bandwidth(device, quick)
    layers = measure_layers(device, dtype, gemm["peak"], gemm["half_rows"], quick)
    bw_eff = 0.9
    # What the estimator would predict for the decode step without overhead; the rest is overhead.
    rows = layers["decode_batch"]
    step_rate = gemm["peak"] * layers["efficiency"] * rows / (rows + gemm["half_rows"])
    step_model = max(
        layers["decode_flops"] / step_rate,
        layers["decode_bytes"] / (bandwidth * bw_eff),
    )
    step_overhead = max(layers["decode_step_seconds"] - step_model, 0.0)
    host = measure_host(device, quick)
    launch = measure_launch(device)
    ar = measure_allreduce(device, quick)
    assumed = []
    if device.type == "cpu":
        mem_total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        memory = mem_total // max(1, slots)
        label = name or "cpu"
        if ar is None:
            ar = {"bus_bandwidth": bandwidth / 10, "latency": 1e-4}
            assumed.append("intra-node link")
        inter_bw, inter_lat = ar["bus_bandwidth"], ar["latency"]
        assumed.append("inter-node link = intra-node (one machine)")
    else:
        props = torch.cuda.get_device_properties(device)
        memory = props.total_memory
        label = name or props.name.replace(" ", "-")
        if ar is None:
            ar = {"bus_bandwidth": 3.6e11, "latency": 2e-6}
            assumed.append("intra-node link (one GPU: H100 NVLink figures)")
        inter_bw, inter_lat = 4.5e10, 2.5e-5
        assumed.append("inter-node link (400 Gb/s per GPU)")
    overhead = max(step_overhead, KERNELS_PER_LAYER * launch)
    measured: dict[str, Any] = {
        "host": platform.node(),
        "machine": platform.machine(),
        "torch": str(torch.__version__),
        "device": str(device),
        "threads": torch.get_num_threads(),
        "load_average": list(os.getloadavg()),
        "dtype": str(dtype).replace("torch.", ""),
        "gemm_hidden": gemm["hidden"],
        "gemm_flops_by_rows": {int(k): float(v) for k, v in gemm["flops_by_rows"].items()},
        "layer": {k: (float(v) if isinstance(v, int | float) else v) for k, v in layers.items()},
        "assumed": assumed,
    }
    if device.type == "cpu":
        # The worker's own engine (what local mode runs): the synthetic layer above misses
        # the engine's Python decode loop, per-sequence sampling, its real backward/optimizer
        # and a reward function's per-sample cost. `rlhfctl profile` solves the profile's
        # engine terms from these figures (the planner's `calibrate`, on the operator side).
        measured["engine"] = measure_engine(quick)
        measured["load_average_after"] = list(os.getloadavg())
    return {
        "name": label,
        "kind": device.type if device.type == "cpu" else "gpu",
        # Measured GEMM peak; the efficiency is what a whole decoder layer reaches of it.
        "peak_flops": float(gemm["peak"]),
        "matmul_efficiency": float(layers["efficiency"]),
        "matmul_half_tokens": float(gemm["half_rows"]),
        "memory_bytes": int(memory),
        "usable_memory_fraction": 0.9 if device.type == "cuda" else 0.7,
        "memory_bandwidth": float(bandwidth),
        "bandwidth_efficiency": bw_eff,
        "intra_node_bandwidth": float(ar["bus_bandwidth"]),
        "intra_node_latency": float(ar["latency"]),
        "inter_node_bandwidth": float(inter_bw),
        "inter_node_latency": float(inter_lat),
        "host_bandwidth": float(host),
        "kernel_overhead": float(launch),
        "generation": {
            "torch": {"bandwidth_efficiency": 0.6, "step_overhead_per_layer": overhead},
            # vLLM batches and (on GPU) replays CUDA graphs: a fraction of the launches.
            "vllm": {
                "bandwidth_efficiency": 0.8,
                "step_overhead_per_layer": overhead / (10 if device.type == "cuda" else 2),
            },
        },
        "measured": measured,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Measure a device profile for the planner.")
    parser.add_argument("--out", required=True, help="YAML file to write")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--name", help="profile name (default: cpu, or the GPU's name)")
    parser.add_argument("--slots", type=int, default=2, help="CPU slots sharing this machine")
    parser.add_argument("--quick", action="store_true", help="fewer shapes and smaller copies")
    args = parser.parse_args(argv)
    import yaml

    data = measure(args.device, args.name, args.slots, args.quick)
    with open(args.out, "w", encoding="utf-8") as fh:
        fh.write("# Measured by `rlhfctl profile` (python -m rlhf_worker.profiling).\n")
        yaml.safe_dump(data, fh, sort_keys=False)
    print(f"wrote {args.out}: {data['name']}, {data['peak_flops'] / 1e9:.1f} GFLOP/s peak GEMM, "
          f"{data['memory_bandwidth'] / 1e9:.1f} GB/s memory")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
