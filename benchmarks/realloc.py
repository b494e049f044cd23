"""Reallocation throughput against raw gloo transfers of the same bytes between the same ranks.

    .venv/bin/python benchmarks/realloc.py [--repeats 5] [--bucket-mb 32] [--inflight 32] [--only NAME] [--small]

Four CPU processes (gloo on loopback, one thread each) hold a ~100M-parameter
Llama-shaped model (random float32 weights, GQA) under a source layout and
reallocate it to a destination layout. For each layout pair it prints:

* MB moved (between ranks; local copies excluded) and, for four ways of
  reallocating, the median seconds of ``--repeats`` runs and the effective GB/s.
  Each makes a transient copy as ``copies.transient_copy`` does: a destination
  shard that is a source shard, or a block of one, is a view of it.
  - "cold": new destination shards from ``torch.empty`` (a process's first
    transient copy, or any reallocation without a pool): fresh pages faulted in;
  - "steady": what the runtime does from its second iteration on
    (``copies.transient_copy`` with the worker's ``COPY_POOL``, see
    ``runtime/models.py``): destination shards and packing buffers from a
    ``StoragePool`` into which the previous run's copy was given back after
    use, so no fresh memory is touched (giving the copy back, which the
    runtime does after the call that used it, is outside the timing);
  - "warm": refilling the previous run's tensors in place (``into=``), as a
    rollout engine keeping its own weight buffers would;
  - "in place" (last columns): steady, with the source shards kept inside
    buffers shaped as their destination shards where they fit
    (``copies.house``), as the runtime keeps a trained role's with
    ``spec.placement.inPlaceResharding``: the kept part is not copied, the rest
    is received around it;
* raw p2p: the same bytes per (sender, receiver) pair as one preallocated flat
  buffer each, all posted at once with ``batch_isend_irecv``; raw bcast: the
  same, as concurrent broadcasts in one 2-rank group per pair;
* ratio = reallocation GB/s / raw p2p GB/s for each of cold, steady, warm and
  in place (the target is >= 0.8);
* peak extra memory per rank: "acct" is the executor's exact accounting of
  what it allocates (destination shards + message buffers, ``MemoryStats``) in
  a cold run; "rss" is the growth of the process's peak resident set (VmHWM,
  reset through /proc/self/clear_refs before each run), max over ranks, in a
  cold run, "steady rss" the same in a steady run; "pool MB" is what the pool
  holds between steady runs (one transient copy and its packing buffers). "dst"
  is the largest destination shard set of any rank;
* where the time goes: "local MB" is the most any rank copies from its own
  source shards (work the raw transfer does not do; in a steady run, and last
  in an in-place one), "msgs" the most messages any rank posts (the raw
  transfer posts one per peer), and "cpu s" the CPU seconds (user + system,
  all threads, summed over the 4 ranks; medians) of a raw p2p transfer and of
  a steady reallocation;
* "floor s": the raw p2p transfer with the steady run's local copies done while
  the bytes move (into the warm tensors): the least any reallocation that
  copies them must do; "steady/floor" how close the executor comes to it;
* "prebuilt s": the executor's own messages (the same slices of the same
  tensors, packed ones packed beforehand), built outside the timing and posted
  all at once as the executor posts them, with the local copies meanwhile and
  the unpacking after: everything but the executor's bookkeeping, so
  "steady/prebuilt" is what that bookkeeping costs, and prebuilt against floor
  what one message per weight slice costs against one per pair of ranks.

All eight measurements are interleaved in every repeat, starting one column
later each repeat so that none always follows the same one. Every destination
shard is checked against the source shards once per pair (cold, steady and warm
share the code that fills them; the in-place copy is checked on its own), and
the warm tensors again at the end (the prebuilt runs refill them too).
``THP_MEM_ALLOC_ENABLE=1`` (transparent huge pages for torch's CPU allocations)
is set unless ``--no-thp``: fresh memory on 4 KiB pages faults at ~1 GB/s
here, slower than the transfer. The machine has 2 cores for 4 processes and is
shared: compare the columns of one run, not runs with each other. Sample output
(2-core machine, busy: raw p2p at 3.2-4.4 GB/s in these runs, 4.0-6.2 in
quieter ones):

    model: 99.5M params, 398 MB float32; bucket 32 MB, 32 steps in flight, 11 repeats (medians), THP_MEM_ALLOC_ENABLE=1
    pair                 MB cold s  GB/s steady s  GB/s warm s  GB/s p2p GB/s bcast GB/s ratio cold steady  warm dst MB acct MB rss MB steady rss pool MB local MB msgs cpu s p2p steady floor s prebuilt s steady/floor steady/prebuilt in place s  GB/s ratio local MB
    tp2dp2 -> tp1dp4    796  0.645  1.23    0.252  3.16  0.267  2.98     4.15       4.24       0.30   0.76  0.72    398     398    397          0     398      199  125     0.321  0.466   0.239      0.245         0.95            0.97      0.210  3.78  0.91        0
    tp4 -> tp2dp2       597  0.213  2.81    0.156  3.83  0.154  3.86     4.75       4.85       0.59   0.81  0.81    199     199    190          0     199       99  232     0.221  0.297   0.139      0.147         0.89            0.95      0.140  4.25  0.90        0
    pp2tp2 -> tp4       299  0.099  3.03    0.087  3.42  0.089  3.35     4.05       3.91       0.75   0.84  0.83    100     100     49          0     100        0  118     0.127  0.165   0.077      0.081         0.88            0.92      0.090  3.31  0.82        0
    tp2@01 -> tp2@23    398  0.174  2.28    0.109  3.65  0.102  3.92     4.57       4.41       0.50   0.80  0.86    199     199    174          0     199        0   62     0.165  0.202   0.091      0.101         0.83            0.92      0.105  3.78  0.83        0
    tp1@0 -> dp3@123   1194  0.696  1.72    0.336  3.55  0.332  3.59     3.73       4.93       0.46   0.95  0.96    398     398    348          0     398        0  189     0.522  0.543   0.321      0.336         0.95            1.00      0.315  3.79  1.02        0

Reading it: raw p2p keeps ~1.7 of the 2 cores busy (loopback TCP is copies in
the kernel), so the transfer is CPU-bound and every other CPU cycle of a
reallocation shows up in its time; the ratios follow the CPU columns. Going
from raw to steady, in three parts:

1. The local copies (raw -> floor): what a rank keeps, and cannot simply view,
   is copied from its source shards into its destination shards.
   tp2dp2 -> tp1dp4 copies 199 MB per rank (its half into the whole), as many
   bytes as it receives, and on this machine a memory copy costs about what a
   loopback transfer of the same bytes costs: its floor is 0.7-0.8 of raw, so
   a transient copy made afresh does not reliably reach 0.8 there. (Where the
   destination shard is a block of the source shard, a quarter of a half as in
   pp2tp2 -> tp4, it is a view: nothing is copied.) In place removes this
   part: the half already lies inside the whole, and only the other half
   arrives.
2. One message per weight slice (floor -> prebuilt): a rank of tp4 -> tp2dp2
   posts 232 messages where raw posts 2-5; gloo exchanges ready notifications
   for each. No weight slice is packed: row-parallel weights are stored
   column-major (``rlhf_worker/model/storage.py``), so a tensor-parallel slice of any
   weight is one block of memory in both layouts and goes straight from one
   tensor into the other; only pieces under 128 KB (norms) are packed together.
3. The executor's bookkeeping (prebuilt -> steady): steady runs at 0.91-1.03
   of prebuilt here. It builds all its straight-through messages in one loop
   and posts them at once (``execute._steps``); quiet and with its sends and
   receives replaced by no-ops, a rank's whole part of tp4 -> tp2dp2 costs
   1.2 ms of Python (2.4 ms with the pool's allocation and return).

Over four runs (11 repeats each; medians of the four in brackets) in place
reached 0.91-0.96 of raw on tp2dp2 -> tp1dp4 (0.94), 0.85-0.90 on
tp4 -> tp2dp2 (0.89), 0.82-0.87 on pp2tp2 -> tp4 (0.87), 0.77-0.87 on
tp2@01 -> tp2@23 (0.83) and 0.90-1.03 on tp1@0 -> dp3@123 (1.00); steady
0.69-0.76 (0.74), 0.73-0.81 (0.78), 0.84-0.93 (0.87), 0.78-0.86 (0.82) and
0.84-1.01 (0.98). The last two pairs have no local copies (disjoint meshes), so
in place and steady are the same reallocation there and differ by noise. On
GPUs a local copy runs at memory bandwidth, several times the interconnect's,
and NCCL needs no CPU per byte, so parts 1 and 2 shrink accordingly. Cold runs
add the first touch of the new destination memory (0.3-0.8 of raw). Broadcasts
in 2-rank groups and batched p2p move the same bytes at about the same speed
on gloo.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import sys
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from rlhf_operator.contract.sharding import Layout, Region, region_numel
from rlhf_worker.model import tiny
from rlhf_worker.model.storage import in_storage_order
from rlhf_worker.model.tiny import tiny_shape
from rlhf_worker.realloc.copies import house
from rlhf_worker.realloc.execute import (
    MemoryStats,
    Message,
    local_copies,
    poster,
    prepared_messages,
    reallocate,
    unpack,
)
from rlhf_worker.realloc.plan import (
    ReallocPlan,
    Transfer,
    bytes_by_pair,
    bytes_moved,
    plan_reallocation,
)
from rlhf_worker.realloc.pool import StoragePool

WORLD = 4
# --small: the tests' small model; otherwise a 100M-parameter one (400 MB in float32).
SMALL = tiny_shape(**tiny.SMALL)
MODEL = tiny_shape(
    hidden_size=768,
    intermediate_size=2048,
    num_hidden_layers=8,
    num_attention_heads=12,
    num_key_value_heads=4,
    head_dim=64,
    vocab_size=32000,
)
PAIRS: list[tuple[str, Layout, Layout]] = [
    ("tp2dp2 -> tp1dp4", Layout((0, 1, 2, 3), dp=2, tp=2), Layout((0, 1, 2, 3), dp=4)),
    ("tp4 -> tp2dp2", Layout((0, 1, 2, 3), tp=4), Layout((0, 1, 2, 3), dp=2, tp=2)),
    ("pp2tp2 -> tp4", Layout((0, 1, 2, 3), pp=2, tp=2), Layout((0, 1, 2, 3), tp=4)),
    ("tp2@01 -> tp2@23", Layout((0, 1), tp=2), Layout((2, 3), tp=2)),
    ("tp1@0 -> dp3@123", Layout((0,)), Layout((1, 2, 3), dp=3)),
]


@dataclass
class PairResult:
    name: str
    moved: int
    realloc_s: float
    steady_s: float
    warm_s: float
    p2p_s: float
    bcast_s: float
    floor_s: float  # raw p2p with the plan's local copies done meanwhile
    prebuilt_s: float  # the executor's own messages, built beforehand, posted at once
    in_place_s: float  # steady, with the source shards kept inside their destinations
    dst_bytes: int
    acct_peak: int
    rss_peak: int
    steady_rss: int
    pool_bytes: int
    steady_cpu: float  # this rank's CPU seconds (median) in a steady-state reallocation
    p2p_cpu: float  # the same in the raw p2p transfer
    local_bytes: int  # bytes this rank copies from its own source shards (steady)
    in_place_local: int  # the same in an in-place reallocation
    messages: int  # messages this rank posts in a reallocation (raw: one per peer)


def source_shard(name: str, region: Region, column_major: bool) -> torch.Tensor:
    """Random weights of one source region, the same on every replica that holds it, in the
    memory order the worker keeps that parameter in (as ``load_shards`` returns them)."""
    gen = torch.Generator().manual_seed(zlib.crc32(repr((name, region)).encode()))
    return in_storage_order(
        torch.rand(tuple(b - a for a, b in region), generator=gen), column_major
    )


def rss_reset() -> int:
    """Reset the peak RSS to the current RSS (Linux >= 4.0); return the current RSS in bytes."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    return _status_kb("VmRSS") * 1024


def rss_peak() -> int:
    return _status_kb("VmHWM") * 1024


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def check(plan: ReallocPlan, rank: int, out: dict[str, torch.Tensor] | None) -> None:
    """Destination shards equal the source shards they came from (no full model built)."""
    from rlhf_worker.realloc.plan import intersect, local_index, source_holders

    if out is None:
        return
    holders = source_holders(plan.model, plan.src)
    for name, want in plan.dst_shards[rank].items():
        for region, _ in holders[name]:
            part = intersect(want, region)
            if part is None:
                continue
            got = out[name][local_index(part, want)]
            ref = source_shard(name, region, name in plan.column_major)[local_index(part, region)]
            if not torch.equal(got, ref):
                raise AssertionError(f"rank {rank}: {name} {part} differs after reallocation")


def cpu_seconds() -> float:
    """CPU time of this process, all threads (gloo's socket threads included), user + system."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def timed(fn: Callable[[], object], cpu: list[float] | None = None) -> float:
    """Wall seconds of ``fn`` on all ranks; appends this rank's CPU seconds to ``cpu``."""
    dist.barrier()
    start, start_cpu = time.perf_counter(), cpu_seconds()
    fn()
    dist.barrier()
    if cpu is not None:
        cpu.append(cpu_seconds() - start_cpu)
    return time.perf_counter() - start


def raw_p2p(
    rank: int,
    pairs: dict[tuple[int, int], torch.Tensor],
    copies: list[tuple[torch.Tensor, torch.Tensor]] | None = None,
) -> None:
    """The raw transfer; with ``copies`` (target, source), those are done while the bytes
    move: a reallocation's local copies, what any reallocation moving the minimum must do."""
    ops = [
        dist.P2POp(dist.isend if src == rank else dist.irecv, buf, dst if src == rank else src)
        for (src, dst), buf in pairs.items()
    ]
    works = dist.batch_isend_irecv(ops) if ops else []
    for target, source in copies or []:
        target.copy_(source)
    for work in works:
        work.wait()


def raw_bcast(pairs: dict[tuple[int, int], torch.Tensor], groups: dict) -> None:
    works = [
        dist.broadcast(buf, src, group=groups[pair], async_op=True)
        for pair, buf in pairs.items()
        for src in [pair[0]]
    ]
    for work in works:
        work.wait()


def run_prebuilt(
    messages: list[Message],
    received: list[tuple[torch.Tensor, Transfer]],
    out: dict[str, torch.Tensor] | None,
    copies: list[tuple[torch.Tensor, torch.Tensor]],
) -> None:
    """Everything a reallocation must do but the executor's own bookkeeping: its messages
    (``prepared_messages``) posted at once as it posts them, its local copies meanwhile,
    and the unpacking of packed messages."""
    works = poster(None)(messages)
    for target, source in copies:
        target.copy_(source)
    for work in works:
        work.wait()
    for message, transfer in received:
        assert out is not None
        unpack(message, transfer, out)


def bench_pair(
    rank: int, name: str, src: Layout, dst: Layout, args: argparse.Namespace
) -> PairResult:
    model = SMALL if args.small else MODEL
    plan = plan_reallocation(model, src, dst, WORLD, bucket_bytes=int(args.bucket_mb * (1 << 20)))
    local = (
        {n: source_shard(n, r, n in plan.column_major) for n, r in plan.src_shards[rank].items()}
        if rank in plan.src_shards
        else None
    )
    # Raw baselines: the same bytes between the same pairs, one flat buffer per pair.
    volume = bytes_by_pair(plan)
    mine = {pair: torch.ones(n // 4) for pair, n in sorted(volume.items()) if rank in pair}
    groups = {pair: dist.new_group(list(pair)) for pair in sorted(volume)}  # all ranks, same order

    def run_realloc(
        stats: MemoryStats,
        into: dict[str, torch.Tensor] | None = None,
        pool: StoragePool | None = None,
        source: dict[str, torch.Tensor] | None = local,
    ) -> dict[str, torch.Tensor] | None:
        # A transient copy, as copies.transient_copy makes it: destination shards that are
        # a source shard or a block of one are views of it.
        return reallocate(
            plan,
            source,
            rank,
            dtype=torch.float32,
            max_inflight_steps=args.inflight,
            alias_local=True,
            into=into,
            stats=stats,
            pool=pool,
        )

    pool = StoragePool()

    # "Warm": refill existing destination tensors (no allocation, no page faults), as
    # when a rollout engine keeps its weight buffers or the allocator caches memory.
    warm = run_realloc(MemoryStats())
    check(plan, rank, warm)
    first = run_realloc(MemoryStats(), pool=pool)
    check(plan, rank, first)
    if first is not None:
        pool.give_unshared(first, local)  # the pool holds one transient copy from now on
    del first
    # The plan's local copies, from the source shards into the warm destination tensors.
    copies = local_copies(plan, rank, local, warm)
    messages, received = prepared_messages(plan, rank, local, warm, dtype=torch.float32)
    # "In place": another set of the same source shards, kept inside buffers shaped as
    # their destination shards where they fit (copies.house), as the runtime keeps a
    # trained role's with spec.placement.inPlaceResharding; filled around them each time.
    housed = {n: t.clone() for n, t in local.items()} if local is not None else None
    housings = house(housed, plan, rank) if housed is not None else {}
    in_place_stats = MemoryStats()
    first_in_place = run_realloc(in_place_stats, housings, pool, housed)
    check(plan, rank, first_in_place)
    if first_in_place is not None:
        pool.give_unshared(first_in_place, housed)
    del first_in_place
    times: dict[str, list[float]] = {
        k: []
        for k in ("realloc", "steady", "warm", "p2p", "bcast", "floor", "prebuilt", "in_place")
    }
    cpu: dict[str, list[float]] = {"steady": [], "p2p": []}
    peaks = {"acct": 0, "rss": 0, "steady_rss": 0}

    def cold() -> None:
        stats = MemoryStats()
        before = rss_reset()
        times["realloc"].append(timed(partial(run_realloc, stats)))  # the copy is dropped after
        peaks["rss"] = max(peaks["rss"], rss_peak() - before)
        peaks["acct"] = max(peaks["acct"], stats.peak)

    def pooled(
        key: str,
        into: dict[str, torch.Tensor] | None = None,
        source: dict[str, torch.Tensor] | None = local,
        cpu_times: list[float] | None = None,
    ) -> None:
        # A transient copy as the runtime makes it, from the pool; given back after use
        # (in the runtime after the call that used it), outside the timing. What it
        # shares with its source (views, the buffers the source is kept in) stays.
        made: list[dict[str, torch.Tensor] | None] = []
        run = partial(run_realloc, MemoryStats(), into, pool, source)
        times[key].append(timed(lambda: made.append(run()), cpu_times))
        if made[0] is not None:
            pool.give_unshared(made[0], source)

    def steady() -> None:
        before = rss_reset()
        pooled("steady", cpu_times=cpu["steady"])
        peaks["steady_rss"] = max(peaks["steady_rss"], rss_peak() - before)

    measurements: list[Callable[[], object]] = [
        cold,
        steady,
        partial(pooled, "in_place", housings, housed),
        lambda: times["warm"].append(timed(partial(run_realloc, MemoryStats(), warm))),
        lambda: times["p2p"].append(timed(partial(raw_p2p, rank, mine), cpu["p2p"])),
        lambda: times["bcast"].append(timed(partial(raw_bcast, mine, groups))),
        lambda: times["floor"].append(timed(partial(raw_p2p, rank, mine, copies))),
        lambda: times["prebuilt"].append(
            timed(partial(run_prebuilt, messages, received, warm, copies))
        ),
    ]
    for repeat in range(args.repeats):
        # Each repeat starts one column later, so that no column always follows the
        # same one (e.g. the cold run, whose freed memory the kernel still reclaims).
        for i in range(len(measurements)):
            measurements[(repeat + i) % len(measurements)]()
    check(plan, rank, warm)  # the warm and prebuilt runs both refill these tensors
    for group in groups.values():
        dist.destroy_process_group(group)
    dst_bytes = 4 * sum(region_numel(r) for r in plan.dst_shards.get(rank, {}).values())
    return PairResult(
        name,
        bytes_moved(plan),
        statistics.median(times["realloc"]),
        statistics.median(times["steady"]),
        statistics.median(times["warm"]),
        statistics.median(times["p2p"]),
        statistics.median(times["bcast"]),
        statistics.median(times["floor"]),
        statistics.median(times["prebuilt"]),
        statistics.median(times["in_place"]),
        dst_bytes,
        peaks["acct"],
        peaks["rss"],
        peaks["steady_rss"],
        pool.held_bytes,
        statistics.median(cpu["steady"]),
        statistics.median(cpu["p2p"]),
        sum(target.numel() * 4 for target, _ in copies),
        in_place_stats.local_copy_bytes,
        sum(len(step) for step in plan.program(rank).steps),
    )


def selected(args: argparse.Namespace) -> list[tuple[str, Layout, Layout]]:
    return [pair for pair in PAIRS if args.only in pair[0]]


def worker(rank: int, port: int, args: argparse.Namespace) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), GLOO_SOCKET_IFNAME="lo")
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    results = [bench_pair(rank, name, src, dst, args) for name, src, dst in selected(args)]
    gathered: list[list[PairResult]] = [[] for _ in range(WORLD)]
    dist.all_gather_object(gathered, results)
    if rank == 0:
        print_table(gathered, args)
    dist.barrier()
    dist.destroy_process_group()


def print_table(per_rank: list[list[PairResult]], args: argparse.Namespace) -> None:
    n = sum(p.numel for p in (SMALL if args.small else MODEL).params())
    print(
        f"model: {n / 1e6:.1f}M params, {n * 4 / 1e6:.0f} MB float32; bucket {args.bucket_mb:g} MB, "
        f"{args.inflight} steps in flight, {args.repeats} repeats (medians), "
        f"THP_MEM_ALLOC_ENABLE={os.environ.get('THP_MEM_ALLOC_ENABLE', 'unset')}"
    )
    header = (
        f"{'pair':<17} {'MB':>5} {'cold s':>6} {'GB/s':>5} {'steady s':>8} {'GB/s':>5} "
        f"{'warm s':>6} {'GB/s':>5} {'p2p GB/s':>8} {'bcast GB/s':>10} "
        f"{'ratio cold':>10} {'steady':>6} {'warm':>5} "
        f"{'dst MB':>6} {'acct MB':>7} {'rss MB':>6} {'steady rss':>10} {'pool MB':>7} "
        f"{'local MB':>8} {'msgs':>4} {'cpu s p2p':>9} {'steady':>6} "
        f"{'floor s':>7} {'prebuilt s':>10} "
        f"{'steady/floor':>12} {'steady/prebuilt':>15} "
        f"{'in place s':>10} {'GB/s':>5} {'ratio':>5} {'local MB':>8}"
    )
    print(header)
    for i in range(len(selected(args))):
        rows = [results[i] for results in per_rank]
        r = rows[0]
        gb = r.moved / 1e9
        print(
            f"{r.name:<17} {r.moved / 1e6:>5.0f} {r.realloc_s:>6.3f} {gb / r.realloc_s:>5.2f} "
            f"{r.steady_s:>8.3f} {gb / r.steady_s:>5.2f} "
            f"{r.warm_s:>6.3f} {gb / r.warm_s:>5.2f} "
            f"{gb / r.p2p_s:>8.2f} {gb / r.bcast_s:>10.2f} {r.p2p_s / r.realloc_s:>10.2f} "
            f"{r.p2p_s / r.steady_s:>6.2f} {r.p2p_s / r.warm_s:>5.2f} "
            f"{max(x.dst_bytes for x in rows) / 1e6:>6.0f} "
            f"{max(x.acct_peak for x in rows) / 1e6:>7.0f} "
            f"{max(x.rss_peak for x in rows) / 1e6:>6.0f} "
            f"{max(x.steady_rss for x in rows) / 1e6:>10.0f} "
            f"{max(x.pool_bytes for x in rows) / 1e6:>7.0f} "
            f"{max(x.local_bytes for x in rows) / 1e6:>8.0f} "
            f"{max(x.messages for x in rows):>4} "
            f"{sum(x.p2p_cpu for x in rows):>9.3f} {sum(x.steady_cpu for x in rows):>6.3f} "
            f"{r.floor_s:>7.3f} {r.prebuilt_s:>10.3f} {r.floor_s / r.steady_s:>12.2f} "
            f"{r.prebuilt_s / r.steady_s:>15.2f} "
            f"{r.in_place_s:>10.3f} {gb / r.in_place_s:>5.2f} {r.p2p_s / r.in_place_s:>5.2f} "
            f"{max(x.in_place_local for x in rows) / 1e6:>8.0f}"
        )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--bucket-mb", type=float, default=32)
    parser.add_argument("--inflight", type=int, default=32)
    parser.add_argument(
        "--no-thp",
        action="store_true",
        help="leave torch's CPU allocations on 4 KiB pages (no THP_MEM_ALLOC_ENABLE)",
    )
    parser.add_argument("--only", default="", help="run the pairs whose name contains this")
    parser.add_argument("--small", action="store_true", help="a tiny model, as a smoke test")
    args = parser.parse_args(argv)
    import socket

    if not args.no_thp:
        # Destination shards are fresh memory: on 4 KiB pages the page faults cost more
        # than the transfer itself on this machine. The spawned ranks inherit this.
        os.environ["THP_MEM_ALLOC_ENABLE"] = "1"

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.start_processes(worker, args=(port, args), nprocs=WORLD, start_method="spawn")


if __name__ == "__main__":
    main(sys.argv[1:])
