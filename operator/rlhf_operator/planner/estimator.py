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
- data-parallel training: a reduce-scatter of the fp32 gradients (ZeRO-2: every
  micro-batch, one collective per tensor) and an all-gather of the updated weights
  in the job dtype over the dp group's link, and the AdamW step (memory-bound over
  the rank's optimizer shard);
- generation: prefill as an inference over the prompts, then one decode step
  per generated token; a step of a stage is the larger of its compute and of
  reading its weights and KV cache (at the backend's bandwidth efficiency),
  plus a per-layer overhead (kernel launches; vLLM's CUDA graphs make it small)
  and a per-sequence overhead (what the torch engine's sampling and bookkeeping cost
  per sequence, as `rlhfctl profile` measures it);
- training: the backward takes `backward_factor` x the forward (2 in theory; the
  profile measures the engine's own ratio), and each optimizer step a fixed
  `optimizer_step_overhead` (per-parameter Python work in the torch engine);
- every call: a fixed worker-side overhead (`call_overhead`); a reward function
  costs `function_seconds_per_sample` per sample (decode + Python).

Links: a tensor-parallel group is always inside a node (tp divides the devices
per node); a dp group or a stage boundary crosses nodes when the mesh spans
nodes and dp x tp (resp. the stage size) reaches a node's devices.

Peak memory (bytes per device, the largest stage), one term per buffer the
workers allocate (`CallCost.breakdown`; `benchmarks/memory.py` measures each
call against it): weights in the role's dtype; a trained role keeps fp32 master
weights + Adam moments (12 bytes per parameter) sharded over dp (ZeRO-1), and
its step allocates fp32 gradients (all of them, or 1/dp under ZeRO-2) and the
reduce-scatter / all-gather buffers (`train_memory`); activations with 1F1B hold
min(micro_batches, pp) micro-batches on the first stage (only layer inputs with
recomputation); fp32 logits of a micro-batch on the last stage; generation holds
the KV cache of a micro-batch (the torch engine generates them one after another)
or of every sequence of its dp rank (vLLM): 2 x kv_heads/tp x head_dim per token
per layer (GQA: key/value heads, not query heads); vLLM also holds its own copy of the
weights and an engine overhead (`contract.plan.engine_memory_bytes` sums what the
worker then asks vLLM to take: its `gpu_memory_utilization`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from ..api.dataflow import Call
from ..contract.plan import vllm_batched_tokens
from ..contract.sharding import ModelShape, stage_layers, vllm_layout_problem
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
    zero_stage: int = 1  # training: 2 shards the fp32 gradients over dp too


@dataclass(frozen=True)
class CallCost:
    seconds: float
    weight_bytes: float  # the role's parameter shard on one device in this layout
    state_bytes: float  # training: the fp32 master weights and moments of dp rank (0 otherwise)
    active_bytes: float  # what the call allocates and frees again, at its peak
    # active_bytes by term (gradients, activations, logits, kv_cache, communication), at
    # the call's peak phase: what `rlhfctl plan` shows.
    breakdown: dict[str, float] = field(default_factory=dict, compare=False)

    @property
    def memory_bytes(self) -> float:
        return self.weight_bytes + self.state_bytes + self.active_bytes


def allreduce_seconds(nbytes: float, n: int, bandwidth: float, latency: float) -> float:
    """All-reduce of `nbytes` over `n` ranks: ring bandwidth term, tree latency term."""
    if n <= 1 or nbytes <= 0:
        return 0.0
    return 2 * (n - 1) / n * nbytes / bandwidth + 2 * math.ceil(math.log2(n)) * latency


def half_allreduce_seconds(nbytes: float, n: int, bandwidth: float, latency: float) -> float:
    """A reduce-scatter or all-gather of `nbytes` (the whole buffer) over `n` ranks."""
    return allreduce_seconds(nbytes, n, bandwidth, latency) / 2


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
    if strategy.zero_stage not in (1, 2):
        return f"ZeRO stage {strategy.zero_stage} is not 1 or 2"
    if strategy.zero_stage == 2 and (call.kind != "train" or dp == 1):
        return "ZeRO-2 (sharded gradients) applies to training with dp > 1 only"
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

    # Bytes a layer's forward writes per token: its element-wise traffic, and the
    # transients alive inside a layer of a forward without a graph (inference, prefill).
    # What a training forward keeps for the backward is `saved_layer_bytes`.
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
    saved_tok_layer = saved_layer_bytes(a, b, tp, seq, kv_copies=prof.kind == "gpu")

    def logits_bytes(tokens: float) -> float:
        """A micro-batch's log-probabilities (`parallel/tensor.py`): fp32 logits, shifted
        and exponentiated, plus the job dtype's logits they were cast from."""
        return tokens * logits_tok * (3 + (b / 4 if b != 4 else 0))

    per_sequence_tok = sequence_bytes(a, b, seq)

    state_bytes = 0.0
    breakdown: dict[str, float]
    if call.kind == "inference":
        tokens = seqs * seq
        slot = forward_stage(tokens, seq / 2) + p2p(tokens)
        seconds = (m + pp - 1) * slot
        # No graph is kept: the peak is a layer's transients or, larger for a large
        # vocabulary, a micro-batch's logits (the same buffers as in training).
        acts, logits = tokens * act_tok_layer, logits_bytes(tokens)
        breakdown = {"activations": acts, "logits": 0.0} if acts >= logits else {"logits": logits}
        active = sum(breakdown.values())
    elif call.kind == "train":
        tokens = seqs * seq
        fwd = forward_stage(tokens, seq / 2)
        bwd = prof.backward_factor * (fwd - kernel) + kernel
        slot = fwd + bwd + (fwd if strategy.recompute else 0.0) + 2 * p2p(tokens)
        zero2 = strategy.zero_stage == 2
        # fp32 gradients reduce-scattered (ZeRO-2: every micro-batch, one collective per
        # tensor), the updated weights all-gathered in the job dtype.
        sync = (m if zero2 else 1) * half_allreduce_seconds(4 * rank_elems, dp, dp_bw, dp_lat)
        sync += half_allreduce_seconds(rank_elems * b, dp, dp_bw, dp_lat)
        # One all-gather per tensor (ZeRO-2: and a reduce-scatter per tensor and micro-batch).
        tensors = ls * role.tensors_per_layer + 3
        sync += ((m if zero2 else 0) + 1) * tensors * math.ceil(math.log2(dp)) * dp_lat
        optim = 32 * rank_elems / dp / (prof.memory_bandwidth * prof.bandwidth_efficiency)
        optim += prof.optimizer_step_overhead
        steps = workload.passes(call)
        seconds = steps * ((m + pp - 1) * slot + sync + optim)
        state_bytes = 12 * rank_elems / dp  # fp32 master weights + 2 moments (ZeRO-1)
        in_flight = min(m, pp)  # 1F1B: micro-batches whose backward is pending
        # Recomputation keeps each layer's input, and one layer's activations at a time,
        # which the backward recomputes after the logits' gradient is done with.
        kept = b * h if strategy.recompute else saved_tok_layer
        acts = tokens * (in_flight * (ls * kept + per_sequence_tok))
        largest = max(role.embedding_params, role.head_split_params, a.intermediate_size * h)
        memory = train_memory(rank_elems, b, dp, zero2, largest / tp)
        logits = logits_bytes(tokens)
        if strategy.recompute and tokens * saved_tok_layer > logits:
            acts, logits = acts + tokens * saved_tok_layer, 0.0
        backward = {**memory.backward, "activations": acts, "logits": logits}
        breakdown = max(backward, memory.step, key=lambda terms: sum(terms.values()))
        active = sum(breakdown.values())
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
        # The torch engine generates one micro-batch after another, each with its own
        # cache; vLLM keeps every sequence of its replica in flight.
        in_cache = batch / dp if workload.backend == "vllm" else seqs
        kv_cache = in_cache * seq * ls * kv_tok_layer
        breakdown = {
            "kv_cache": kv_cache,
            "activations": prompt_tokens * act_tok_layer,
            "logits": seqs * logits_tok,
        }
        if workload.backend == "vllm":
            # vLLM keeps weights of its own beside the call's copy (which the update reads
            # and the log-probabilities are recomputed with), and some memory of its own;
            # it chunks prefills, so at most its max_num_batched_tokens are in flight.
            chunk = min(prompt_tokens, vllm_batched_tokens(p + g))
            breakdown["activations"] = chunk * act_tok_layer
            breakdown["engine_weights"] = weight_bytes
            breakdown["engine_overhead"] = backend.engine_overhead_bytes
        active = sum(breakdown.values())
    return CallCost(seconds + prof.call_overhead, weight_bytes, state_bytes, active, breakdown)


def saved_layer_bytes(a: ModelShape, b: int, tp: int, seq: int, kv_copies: bool = False) -> float:
    """Bytes one decoder layer keeps for its backward, per token (`model/decoder.py`, in
    the job dtype's `b` bytes unless said): the attention's query and output (query
    heads), keys and values (key/value heads: SDPA's enable_gqa, no copies per query
    head), the MLP's gate, up, their activation and
    product; per RMSNorm its fp32 input and result (in float32 one of them is the input
    itself); rotary cos/sin cast to the job dtype (none in float32); the boolean mask as
    the attention's additive mask, [T] per token (a batch without left padding needs no
    mask: then this is [T] per token too many); the attention's fp32 log-sum-exp per
    head and the norms' fp32 scales. On a GPU (`kv_copies`) a masked grouped-query
    attention repeats its keys and values per query head (the decoder does, for
    SDPA's memory-efficient kernel), so they are kept at the query heads' size."""
    q = a.num_heads * a.head_dim / tp
    kv = (a.num_heads if kv_copies else a.num_kv_heads) * a.head_dim / tp
    norms = 2 * (12 * a.hidden_size if b == 4 else 8 * a.hidden_size)
    rope = 4 * a.head_dim * b if b != 4 else 0
    return (
        b * (2 * q + 2 * kv + 4 * a.intermediate_size / tp + seq)
        + norms
        + rope
        + 4 * a.num_heads / tp
        + 8
    )


def sequence_bytes(a: ModelShape, b: int, seq: int) -> float:
    """Per token, once per micro-batch of a stage: fp32 rotary cos and sin, the boolean
    attention mask [T], the embedding's output."""
    return 8 * a.head_dim + seq + b * a.hidden_size


@dataclass(frozen=True)
class TrainMemory:
    """A training step's transient bytes on one device, by term, in its two phases."""

    backward: dict[str, float]  # while micro-batches run (activations added by the caller)
    step: dict[str, float]  # reduce-scatter, AdamW and all-gather, activations freed


def train_memory(
    elems: float, dtype_bytes: int, dp: int, zero2: bool, largest: float
) -> TrainMemory:
    """What `rlhf_worker.engine.shards` allocates for a step over `elems` parameters.

    Backward: fp32 gradient sums (every dp chunk under ZeRO-1 at dp > 1, this rank's
    chunk otherwise) and one tensor's gradient in the job dtype as autograd hands it over
    (ZeRO-2 adds its padded fp32 copy and reduced chunk). Step: the reduce-scatter's
    input and output (ZeRO-1), or the gradient chunks and AdamW's denominator for one
    tensor's chunk; then, the gradients freed, one tensor's chunk cast to the job dtype
    and its gathered chunks (dp > 1).
    """
    b = dtype_bytes
    full = not zero2 and dp > 1
    grads = 4 * elems if full else 4 * elems / dp
    handover = b * largest + (4 * largest * (1 + 1 / dp) if zero2 and dp > 1 else 0.0)
    backward = {"gradients": grads, "communication": handover}
    reduce_phase = {
        "gradients": 4 * elems * (1 + 1 / dp) if full else 4 * elems / dp,
        "communication": 0.0 if full else 4 * largest / dp,
    }
    gather_phase = {"communication": b * largest * (1 + 1 / dp) if dp > 1 else 0.0}
    step = max(reduce_phase, gather_phase, key=lambda terms: sum(terms.values()))
    return TrainMemory(backward, step)


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
                train = call.kind == "train"
                for rc in (False, True) if train else (False,):
                    for zero in (1, 2) if train and dp > 1 else (1,):
                        lay = Strategy(dp, tp, pp, m, rc, zero)
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
