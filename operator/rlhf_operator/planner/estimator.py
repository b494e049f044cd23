"""Runtime and memory estimates of one call on one mesh with one parallel strategy.

Time (seconds) of a call per iteration, from the device profile:

- compute: FLOPs / (peak x matmul efficiency x t / (t + t_half)), t the rows
  (tokens) of the micro-batch's GEMMs: small micro-batches run less efficiently;
  plus the element-wise work (norms, rotary, activations, residuals), memory-bound:
  the layer's activations written and read once;
- a memory-bound floor: each forward of a micro-batch reads the stage's weights;
- tensor parallelism: two all-reduces of the activations per layer forward
  (four with the backward), cost 2(n-1)/n x bytes / link + 2 log2(n) x latency;
- pipeline parallelism: (micro_batches + pp - 1) stage slots (the bubble) and a
  point-to-point send of the activations between stages;
- data-parallel training: a gradient reduce-scatter and parameter all-gather
  (ZeRO-1: the volume of one all-reduce) over the dp group's link, and the
  AdamW step (memory-bound over the rank's optimizer shard);
- generation: prefill as an inference over the prompts, then one decode step
  per generated token; a step of a stage is the larger of its compute and of
  reading its weights and KV cache (at the backend's bandwidth efficiency),
  plus a per-layer overhead (kernel launches; vLLM's CUDA graphs make it small)
  and a per-sequence overhead (the torch engine samples each sequence with its own
  generator and keeps per-sequence bookkeeping in Python);
- training: the backward takes `backward_factor` x the forward (2 in theory; the
  profile measures the engine's own ratio), and each optimizer step a fixed
  `optimizer_step_overhead` (per-parameter Python work in the torch engine);
- every call: a fixed worker-side overhead (`call_overhead`); a reward function
  costs `function_seconds_per_sample` per sample (decode + Python).

Links: a tensor-parallel group is always inside a node (tp divides the devices
per node); a dp group or a stage boundary crosses nodes when the mesh spans
nodes and dp x tp (resp. the stage size) reaches a node's devices.

Peak memory (bytes per device, the largest stage): weights in the role's dtype;
training adds gradients (same dtype) and fp32 master weights + Adam moments
(12 bytes per parameter) sharded over dp (ZeRO-1); activations with 1F1B hold
min(micro_batches, pp) micro-batches on the first stage (only layer inputs with
recomputation); fp32 logits of a micro-batch on the last stage; generation holds
the KV cache of every sequence of its dp rank: 2 x kv_heads/tp x head_dim per
token per layer (GQA: key/value heads, not query heads).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..api.dataflow import Call
from ..contract.sharding import stage_layers, vllm_layout_problem
from .cluster import Cluster, Mesh
from .profiles import Profile
from .workload import Workload

KERNELS_PER_LAYER = 12


@dataclass(frozen=True, order=True)
class Strategy:
    """How a call runs on its mesh (ReaL's parallel strategy): the (dp, tp, pp) degrees, the
    micro-batches and activation recomputation. On a mesh's devices the degrees make the
    call's `contract.sharding.Layout` (`Mesh.layout`)."""

    dp: int
    tp: int
    pp: int
    micro_batches: int = 1
    recompute: bool = False


@dataclass(frozen=True)
class CallCost:
    seconds: float
    weight_bytes: float  # the role's parameter shard on one device in this layout
    state_bytes: float  # training: gradients + optimizer shard (0 otherwise)
    active_bytes: float  # activations / KV cache / logits at the call's peak

    @property
    def memory_bytes(self) -> float:
        return self.weight_bytes + self.state_bytes + self.active_bytes


def allreduce_seconds(nbytes: float, n: int, bandwidth: float, latency: float) -> float:
    """All-reduce of `nbytes` over `n` ranks: ring bandwidth term, tree latency term."""
    if n <= 1 or nbytes <= 0:
        return 0.0
    return 2 * (n - 1) / n * nbytes / bandwidth + 2 * math.ceil(math.log2(n)) * latency


def gemm_seconds(flops: float, rows: float, profile: Profile) -> float:
    """Time of matrix multiplications totalling `flops` with `rows` rows (tokens)."""
    if flops <= 0:
        return 0.0
    eff = profile.matmul_efficiency * rows / (rows + profile.matmul_half_tokens)
    return flops / (profile.peak_flops * eff)


def strategy_problem(
    workload: Workload, call: Call, cluster: Cluster, mesh: Mesh, strategy: Strategy
) -> str | None:
    """Why a strategy cannot run this call on this mesh, or None when it can."""
    role = workload.roles[call.role]
    dp, tp, pp, m = strategy.dp, strategy.tp, strategy.pp, strategy.micro_batches
    if dp * tp * pp != mesh.size:
        return f"dp*tp*pp = {dp * tp * pp} is not the mesh size {mesh.size}"
    if role.shape is None:
        return None if tp == pp == 1 else "a reward function runs data-parallel only"
    if cluster.per_node % tp:
        return f"tp {tp} must divide the {cluster.per_node} devices of a node"
    sharding = role.shape.layout_problems(pp=pp, tp=tp)  # what the workers can shard
    if sharding:
        return sharding[0]
    if call.kind == "generate" and workload.backend == "vllm":
        # The workers' own rule (one engine per dp replica, no pipeline stages, a
        # tensor-parallel engine over the whole job's world).
        problem = vllm_layout_problem(mesh.layout(dp, tp, pp), cluster.devices)
        if problem is not None:
            return f"vLLM generation: {problem}"
    batch = workload.batch(call)
    if batch % (dp * m):
        return f"{batch} sequences do not split over dp {dp} x micro-batches {m}"
    if strategy.recompute and call.kind != "train":
        return "recomputation applies to training only"
    return None


def call_cost(
    workload: Workload, call: Call, cluster: Cluster, mesh: Mesh, strategy: Strategy
) -> CallCost:
    """Time and peak memory of `call` on `mesh` with `strategy` (assumed valid)."""
    multi = cluster.nodes_of(mesh) > 1
    multi_layout = multi and strategy.dp * strategy.tp > cluster.per_node
    stage_cross = multi and strategy.dp * strategy.tp >= cluster.per_node
    return _call_cost(
        workload, call, cluster.profile, mesh.size, multi_layout, stage_cross, strategy
    )


def _call_cost(
    workload: Workload,
    call: Call,
    prof: Profile,
    size: int,
    dp_inter: bool,
    pp_inter: bool,
    strategy: Strategy,
) -> CallCost:
    role = workload.roles[call.role]
    if role.shape is None:
        # Rows split evenly over the mesh; a rank scores its share (ceil: the slowest rank).
        n = math.ceil(workload.samples * workload.passes(call) / size)
        return CallCost(prof.call_overhead + n * prof.function_seconds_per_sample, 0.0, 0.0, 0.0)
    a = role.shape
    dp, tp, pp, m = strategy.dp, strategy.tp, strategy.pp, strategy.micro_batches
    b = role.dtype_bytes
    h = a.hidden_size
    q = a.num_heads * a.head_dim
    kv = a.num_kv_heads * a.head_dim
    intra_bw, intra_lat = prof.intra_node_bandwidth, prof.intra_node_latency
    inter_bw, inter_lat = prof.inter_node_bandwidth, prof.inter_node_latency
    dp_bw, dp_lat = (inter_bw, inter_lat) if dp_inter else (intra_bw, intra_lat)
    pp_bw, pp_lat = (inter_bw, inter_lat) if pp_inter else (intra_bw, intra_lat)

    ls = len(stage_layers(a.num_layers, pp, 0))  # the largest stage
    last_stage = len(stage_layers(a.num_layers, pp, pp - 1))
    # Parameters (elements) on one device of the largest stage, embedding and head included.
    layer_elems = role.layer_split_params / tp + role.layer_replicated_params
    first_extra = role.embedding_params / tp
    last_extra = role.head_split_params / tp + role.head_replicated_params
    if pp == 1:
        rank_elems = ls * layer_elems + first_extra + last_extra
    else:
        rank_elems = max(ls * layer_elems + first_extra, last_stage * layer_elems + last_extra)
    weight_bytes = rank_elems * b

    batch = workload.batch(call)
    seqs = batch / (dp * m)  # sequences per micro-batch
    seq = workload.seq_len
    layer_flops_tok = 2 * role.layer_split_params / tp
    attn_flops_tok_ctx = 4 * a.num_heads * a.head_dim / tp
    head_flops_tok = 2 * (role.head_split_params / tp if not role.value_head else a.num_values * h)
    kernel = prof.kernel_overhead * KERNELS_PER_LAYER * ls

    # Activations saved per token per layer for the backward (bytes).
    act_tok_layer = b * (4 * h + (2 * q + 2 * kv) / tp + 4 * a.intermediate_size / tp)

    def forward_stage(tokens: float, ctx: float) -> float:
        """One micro-batch's forward through the busiest stage (compute, weights floor, tp comm)."""
        flops = tokens * (ls * (layer_flops_tok + attn_flops_tok_ctx * ctx) + head_flops_tok)
        compute = gemm_seconds(flops, tokens, prof)
        floor = weight_bytes / (prof.memory_bandwidth * prof.bandwidth_efficiency)
        elementwise = (
            tokens * ls * 2 * act_tok_layer / (prof.memory_bandwidth * prof.bandwidth_efficiency)
        )
        comm = 2 * ls * allreduce_seconds(tokens * h * b, tp, intra_bw, intra_lat)
        return max(compute, floor) + elementwise + comm + kernel

    def p2p(tokens: float) -> float:
        return tokens * h * b / pp_bw + pp_lat if pp > 1 else 0.0

    logits_tok = 4 * (a.vocab_size / tp if not role.value_head else 1)

    state_bytes = 0.0
    if call.kind == "inference":
        tokens = seqs * seq
        slot = forward_stage(tokens, seq / 2) + p2p(tokens)
        seconds = (m + pp - 1) * slot
        active = tokens * (act_tok_layer + logits_tok)
    elif call.kind == "train":
        tokens = seqs * seq
        fwd = forward_stage(tokens, seq / 2)
        bwd = prof.backward_factor * (fwd - kernel) + kernel
        slot = fwd + bwd + (fwd if strategy.recompute else 0.0) + 2 * p2p(tokens)
        grads = rank_elems * b
        sync = allreduce_seconds(grads, dp, dp_bw, dp_lat)
        optim = 32 * rank_elems / dp / (prof.memory_bandwidth * prof.bandwidth_efficiency)
        optim += prof.optimizer_step_overhead
        steps = workload.passes(call)
        seconds = steps * ((m + pp - 1) * slot + sync + optim)
        state_bytes = rank_elems * b + 12 * rank_elems / dp
        in_flight = min(m, pp)
        if strategy.recompute:
            acts = tokens * (in_flight * ls * b * h + act_tok_layer)
        else:
            acts = tokens * in_flight * ls * act_tok_layer
        active = acts + 2 * tokens * logits_tok
    else:  # generate
        backend = prof.backend(workload.backend)
        p, g = workload.prompt_len, workload.gen_len
        prompt_tokens = seqs * p
        prefill = (m + pp - 1) * (forward_stage(prompt_tokens, p / 2) + p2p(prompt_tokens))
        kv_tok_layer = 2 * (kv / tp) * b
        ctx = p + g / 2
        step_flops = seqs * (ls * (layer_flops_tok + attn_flops_tok_ctx * ctx) + head_flops_tok)
        step_bytes = weight_bytes + seqs * ctx * ls * kv_tok_layer
        step = max(
            gemm_seconds(step_flops, seqs, prof),
            step_bytes / (prof.memory_bandwidth * backend.bandwidth_efficiency),
        )
        step += ls * backend.step_overhead_per_layer + seqs * backend.step_overhead_per_sequence
        step += 2 * ls * allreduce_seconds(seqs * h * b, tp, intra_bw, intra_lat)
        step += p2p(seqs)
        decode = max(g - 1, 0) * max(m, pp) * step
        seconds = prefill + decode
        kv_cache = (batch / dp) * seq * ls * kv_tok_layer
        active = kv_cache + prompt_tokens * act_tok_layer + seqs * logits_tok
    return CallCost(seconds + prof.call_overhead, weight_bytes, state_bytes, active)


def offload_seconds(weight_bytes: float, profile: Profile) -> float:
    """Bringing an offloaded frozen role's shard back from pinned host memory."""
    return weight_bytes / profile.host_bandwidth


def divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def strategies_for(
    workload: Workload, call: Call, cluster: Cluster, mesh: Mesh, max_micro: int = 64
) -> list[Strategy]:
    """Every valid strategy of `call` on `mesh` (micro-batches: powers of two up to `max_micro`)."""
    role = workload.roles[call.role]
    if role.shape is None:
        return [Strategy(mesh.size, 1, 1, 1)]
    out = []
    batch = workload.batch(call)
    for tp in divisors(mesh.size):
        if cluster.per_node % tp:
            continue
        for pp in divisors(mesh.size // tp):
            dp = mesh.size // (tp * pp)
            if batch % dp:
                continue
            m = 1
            while m <= max_micro and batch % (dp * m) == 0:
                for rc in (False, True) if call.kind == "train" else (False,):
                    lay = Strategy(dp, tp, pp, m, rc)
                    if strategy_problem(workload, call, cluster, mesh, lay) is None:
                        out.append(lay)
                m *= 2
    return out


def compare_measured(
    estimated: dict[str, float], measured: dict[str, float]
) -> dict[str, dict[str, float]]:
    """Estimated vs measured seconds per call: for each call measured, both and the relative error.

    `estimated` is e.g. `{c.name: c.seconds for c in plan.calls}`; `measured`
    the per-call times a run records. Relative error = (estimated - measured) / measured.
    """
    out = {}
    for name, real in measured.items():
        if name in estimated and real > 0:
            est = estimated[name]
            out[name] = {"estimated": est, "measured": real, "relative_error": (est - real) / real}
    return out
