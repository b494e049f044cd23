"""The estimator's pieces against hand-computed values."""

from __future__ import annotations

import dataclasses

import pytest

from rlhf_operator.api.models import PRESETS
from rlhf_operator.contract.plan import vllm_batched_tokens
from rlhf_operator.contract.sharding import stage_layers
from rlhf_operator.planner.cluster import Cluster, Mesh
from rlhf_operator.planner.estimator import (
    Strategy,
    allreduce_seconds,
    call_cost,
    compare_measured,
    gemm_seconds,
    strategies_for,
    strategy_problem,
)
from rlhf_operator.planner.profiles import GenerationBackend, load_profile
from rlhf_operator.planner.workload import RoleModel, workload_for

from .planner_jobs import make_job


def simple_profile(**changes):
    """Round numbers: everything compute-bound and linear unless a test says otherwise."""
    base = dataclasses.replace(
        load_profile("H100"),
        peak_flops=1e12,
        matmul_efficiency=1.0,
        matmul_half_tokens=1e-9,
        memory_bandwidth=1e18,
        bandwidth_efficiency=1.0,
        intra_node_bandwidth=1e18,
        intra_node_latency=1e-15,
        inter_node_bandwidth=1e18,
        inter_node_latency=1e-15,
        kernel_overhead=1e-15,
    )
    return dataclasses.replace(base, **changes)


def test_allreduce_and_gemm_formulas():
    # ring volume 2(n-1)/n x bytes / bandwidth, plus 2 log2(n) latencies
    assert allreduce_seconds(1e9, 4, 1e10, 1e-5) == pytest.approx(0.15 + 4e-5)
    assert allreduce_seconds(1e9, 1, 1e10, 1e-5) == 0.0
    prof = dataclasses.replace(
        load_profile("H100"), peak_flops=1e12, matmul_efficiency=0.5, matmul_half_tokens=100
    )
    # 100 rows reach half of the 50% efficiency: 1e12 / (1e12 x 0.25)
    assert gemm_seconds(1e12, 100, prof) == pytest.approx(4.0)


def test_parameter_counts_match_published_models():
    assert RoleModel("actor", PRESETS["llama2-7b"]).params == 6_738_415_616
    assert RoleModel("actor", PRESETS["llama2-70b"]).params == 68_976_648_192
    assert RoleModel("actor", PRESETS["qwen2.5-7b"]).params == 7_615_616_512
    critic = RoleModel("critic", PRESETS["llama2-7b"], value_head=True)
    assert critic.params == 6_738_415_616 - 32000 * 4096 + 4096


def test_forward_flops():
    role = RoleModel("actor", PRESETS["llama2-7b"])
    h, L = 4096, 32
    matmul = L * (4 * h * h + 3 * h * 11008) + 32000 * h
    # 10 tokens attending to 100 each: 2 x matmul params + 4 x L x h x context per token
    assert role.forward_flops(10, 100) == pytest.approx(10 * (2 * matmul + 4 * L * h * 100))


def test_training_memory_is_zero1_over_dp():
    job = make_job("llama2-7b", gpus=8)
    w = workload_for(job)
    cluster = Cluster(1, 8, load_profile("H100"))
    n = w.roles["actor"].params
    cost = call_cost(w, w.call("actor_train"), cluster, Mesh(0, 8), Strategy(8, 1, 1, 1))
    assert cost.weight_bytes == pytest.approx(2 * n)
    assert cost.state_bytes == pytest.approx(12 * n / 8)  # fp32 master + moments, 1/dp
    # The step's fp32 gradients: all of them until the reduce-scatter (ZeRO-1), 1/dp (ZeRO-2).
    assert cost.breakdown["gradients"] == pytest.approx(4 * n)
    zero2 = call_cost(w, w.call("actor_train"), cluster, Mesh(0, 8), Strategy(8, 1, 1, 1, False, 2))
    assert zero2.breakdown["gradients"] == pytest.approx(4 * n / 8)
    assert zero2.seconds > cost.seconds  # a reduce-scatter per tensor (one micro-batch here)
    tp = call_cost(w, w.call("actor_train"), cluster, Mesh(0, 8), Strategy(2, 4, 1, 1))
    assert tp.weight_bytes < cost.weight_bytes / 3.9
    inf = call_cost(w, w.call("ref_inf"), cluster, Mesh(0, 8), Strategy(8, 1, 1, 1))
    assert inf.state_bytes == 0


def test_kv_cache_counts_key_value_heads_not_query_heads():
    job = make_job("codellama-34b", gpus=8, batch=64, prompt=1024, gen=1024)
    w = workload_for(job)
    cluster = Cluster(1, 8, load_profile("H100"))
    lay = Strategy(1, 8, 1, 1)
    gqa = call_cost(w, w.call("actor_gen"), cluster, Mesh(0, 8), lay)
    # The same model with 64 key/value heads (multi-head attention).
    mha_arch = PRESETS["codellama-34b"].model_copy(update={"num_key_value_heads": 64})
    roles = dict(w.roles)
    roles["actor"] = dataclasses.replace(roles["actor"], arch=mha_arch)
    mha_w = dataclasses.replace(w, roles=roles)
    mha = call_cost(mha_w, w.call("actor_gen"), cluster, Mesh(0, 8), lay)
    seq, layers, head_dim = 2048, 48, 128
    per_token_layer = lambda kv_heads: 2 * (kv_heads * head_dim / 8) * 2  # noqa: E731
    kv_gqa = 64 * seq * layers * per_token_layer(8)
    kv_mha = 64 * seq * layers * per_token_layer(64)
    # Only the KV cache, the k/v part of the prefill activations (vLLM chunks prefills to
    # its max_num_batched_tokens) and vLLM's own copy of the k/v projections differ.
    act_diff = vllm_batched_tokens(seq) * 2 * (2 * (64 - 8) * head_dim / 8)
    engine_weights_diff = layers * 2 * 8192 * (64 - 8) * head_dim / 8 * 2
    expected = kv_mha - kv_gqa + act_diff + engine_weights_diff
    assert mha.active_bytes - gqa.active_bytes == pytest.approx(expected)


def test_inference_time_hand_computed():
    job = make_job("tiny", gpus=1, per_node=1, batch=4, prompt=8, gen=8, minibatches=1)
    w = workload_for(job)
    prof = simple_profile()
    cluster = Cluster(1, 1, prof)
    role = w.roles["ref"]
    tokens, ctx = 4 * 16, 8.0
    h, i, L = 256, 512, 4
    flops = tokens * (L * (2 * role.layer_split_params + 4 * 8 * 32 * ctx) + 2 * 512 * h)
    act = 2 * (4 * h + (2 * 256 + 2 * 128) + 4 * i)
    elementwise = tokens * L * 2 * act / 1e18
    cost = call_cost(w, w.call("ref_inf"), cluster, Mesh(0, 1), Strategy(1, 1, 1, 1))
    assert cost.seconds == pytest.approx(flops / 1e12 + elementwise, rel=1e-6)


def test_pipeline_bubble():
    job = make_job("tiny", gpus=2, per_node=2, batch=64, prompt=8, gen=8, minibatches=1)
    w = workload_for(job)
    cluster = Cluster(1, 2, simple_profile())
    call = w.call("ref_inf")
    one = call_cost(w, call, cluster, Mesh(0, 2), Strategy(1, 1, 2, 1)).seconds
    four = call_cost(w, call, cluster, Mesh(0, 2), Strategy(1, 1, 2, 4)).seconds
    # (m + pp - 1) slots of 1/m of the work: 2 slots of the whole vs 5 quarters
    assert four / one == pytest.approx(5 / 4 / 2, rel=1e-3)
    assert [len(stage_layers(10, 4, s)) for s in range(4)] == [3, 3, 2, 2]


def test_gradient_sync_across_nodes_costs_more():
    job = make_job("llama2-7b", gpus=16)
    w = workload_for(job)
    cluster = Cluster(2, 8, load_profile("H100"))
    call = w.call("actor_train")
    across = call_cost(w, call, cluster, Mesh(0, 16), Strategy(16, 1, 1, 1)).seconds
    cluster_one = Cluster(1, 16, load_profile("H100"))  # same devices, one big node
    within = call_cost(w, call, cluster_one, Mesh(0, 16), Strategy(16, 1, 1, 1)).seconds
    assert across > within


def test_vllm_generation_is_faster_than_torch():
    torch_w = workload_for(make_job("llama2-7b", backend="torch"))
    vllm_w = workload_for(make_job("llama2-7b", backend="vllm"))
    cluster = Cluster(1, 8, load_profile("H100"))
    lay = Strategy(4, 2, 1, 1)
    t = call_cost(torch_w, torch_w.call("actor_gen"), cluster, Mesh(0, 8), lay).seconds
    v = call_cost(vllm_w, vllm_w.call("actor_gen"), cluster, Mesh(0, 8), lay).seconds
    assert v < t


def test_layout_problems_are_named():
    w = workload_for(make_job("codellama-34b", gpus=16, batch=64))
    cluster = Cluster(2, 8, load_profile("H100"))
    gen = w.call("actor_gen")
    assert "mesh size" in strategy_problem(w, gen, cluster, Mesh(0, 16), Strategy(4, 2, 1))
    assert "devices of a node" in strategy_problem(w, gen, cluster, Mesh(0, 16), Strategy(1, 16, 1))
    wide = Cluster(1, 16, load_profile("H100"))
    assert "key/value heads" in strategy_problem(w, gen, wide, Mesh(0, 16), Strategy(1, 16, 1))
    assert "split over dp" in strategy_problem(w, gen, cluster, Mesh(0, 16), Strategy(16, 1, 1, 8))
    assert strategy_problem(w, gen, cluster, Mesh(0, 16), Strategy(2, 8, 1, 4)) is None
    for lay in strategies_for(w, gen, cluster, Mesh(0, 16)):
        assert lay.dp * lay.tp * lay.pp == 16 and lay.tp <= 8


def test_vllm_generation_layouts_are_what_the_worker_can_launch():
    w = workload_for(make_job("llama2-7b", gpus=16, backend="vllm"))
    cluster = Cluster(2, 8, load_profile("H100"))
    gen, train = w.call("actor_gen"), w.call("actor_train")
    assert "must have pp=1" in strategy_problem(w, gen, cluster, Mesh(0, 16), Strategy(4, 2, 2))
    # tp>1: one engine per tp consecutive ranks of the job's whole world.
    problem = strategy_problem(w, gen, cluster, Mesh(0, 8), Strategy(4, 2, 1))
    assert "must span all 16 workers in rank order" in problem
    assert strategy_problem(w, gen, cluster, Mesh(0, 16), Strategy(8, 2, 1)) is None
    assert strategy_problem(w, gen, cluster, Mesh(8, 8), Strategy(8, 1, 1)) is None
    # Only generation is restricted, and only with vLLM.
    assert strategy_problem(w, train, cluster, Mesh(0, 8), Strategy(2, 2, 2)) is None
    torch_w = workload_for(make_job("llama2-7b", gpus=16, backend="torch"))
    assert strategy_problem(torch_w, gen, cluster, Mesh(0, 8), Strategy(2, 2, 2)) is None


def test_compare_measured():
    out = compare_measured({"a": 2.0, "b": 1.0}, {"a": 1.0, "c": 3.0})
    assert out == {"a": {"estimated": 2.0, "measured": 1.0, "relative_error": 1.0}}


def test_call_overhead_is_added_once_per_call():
    job = make_job("tiny", gpus=1, per_node=1, batch=4, prompt=8, gen=8, minibatches=1)
    w = workload_for(job)
    mesh, lay = Mesh(0, 1), Strategy(1, 1, 1, 1)
    for name in ("actor_gen", "ref_inf", "actor_train"):
        base = call_cost(w, w.call(name), Cluster(1, 1, simple_profile()), mesh, lay).seconds
        more = Cluster(1, 1, simple_profile(call_overhead=0.01))
        assert call_cost(w, w.call(name), more, mesh, lay).seconds == pytest.approx(base + 0.01)


def test_backward_factor_scales_the_backward():
    job = make_job("tiny", gpus=1, per_node=1, batch=4, prompt=8, gen=8, minibatches=1)
    w = workload_for(job)
    mesh, lay = Mesh(0, 1), Strategy(1, 1, 1, 1)
    cluster = Cluster(1, 1, simple_profile())
    fwd = call_cost(w, w.call("ref_inf"), cluster, mesh, lay).seconds  # same forward
    two = call_cost(w, w.call("actor_train"), cluster, mesh, lay).seconds
    three = Cluster(1, 1, simple_profile(backward_factor=3.0))
    # forward + 2 forwards (+ the optimizer) vs forward + 3 forwards: one forward more
    assert call_cost(w, w.call("actor_train"), three, mesh, lay).seconds == pytest.approx(
        two + fwd, rel=1e-6
    )


def test_decode_overheads_per_layer_and_per_sequence():
    w = workload_for(
        make_job(
            "tiny", gpus=1, per_node=1, batch=4, prompt=8, gen=8, minibatches=1, backend="torch"
        )
    )
    mesh = Mesh(0, 1)
    torch_backend = GenerationBackend(1.0, 0.0, 0.0)
    prof = simple_profile(generation={"torch": torch_backend})
    base = call_cost(w, w.call("actor_gen"), Cluster(1, 1, prof), mesh, Strategy(1, 1, 1, 1))
    slow = simple_profile(generation={"torch": GenerationBackend(1.0, 1e-3, 1e-4)})
    for m in (1, 2):
        lay = Strategy(1, 1, 1, m)
        got = call_cost(w, w.call("actor_gen"), Cluster(1, 1, slow), mesh, lay).seconds
        ref = call_cost(w, w.call("actor_gen"), Cluster(1, 1, prof), mesh, lay).seconds
        # 7 decode steps per micro-batch, m micro-batches of 4/m sequences, 4 layers:
        # 7 x m x (4 x 1e-3 + 4/m x 1e-4)
        assert got - ref == pytest.approx(7 * m * (4e-3 + 4 / m * 1e-4), rel=1e-6)
    assert base.seconds > 0


def test_reward_function_cost_per_sample_and_rank():
    job = make_job("tiny", gpus=2, per_node=2, batch=6, prompt=8, gen=8, minibatches=1)
    w = workload_for(job)
    # The reward role as a function (no model): rows split evenly over the mesh.
    w = dataclasses.replace(w, roles={**w.roles, "reward": RoleModel("reward", None)})
    prof = simple_profile(call_overhead=0.002, function_seconds_per_sample=1e-3)
    cost = call_cost(w, w.call("reward_inf"), Cluster(1, 2, prof), Mesh(0, 2), Strategy(2, 1, 1))
    # 6 samples over 2 ranks: 3 each, plus the call's fixed overhead
    assert cost.seconds == pytest.approx(0.002 + 3e-3)


def test_optimizer_step_overhead_once_per_optimizer_step():
    # 2 minibatches: two optimizer steps per iteration, each paying the fixed overhead.
    w = workload_for(make_job("tiny", gpus=1, per_node=1, batch=4, prompt=8, gen=8, minibatches=2))
    mesh, lay, call = Mesh(0, 1), Strategy(1, 1, 1, 1), w.call("actor_train")
    base = call_cost(w, call, Cluster(1, 1, simple_profile()), mesh, lay).seconds
    more = Cluster(1, 1, simple_profile(optimizer_step_overhead=0.01))
    assert call_cost(w, call, more, mesh, lay).seconds == pytest.approx(base + 2 * 0.01)


def test_the_search_keeps_zero2_where_it_is_the_lean_choice() -> None:
    """ZeRO-2 trades a reduce-scatter per tensor and micro-batch for 1/dp of the fp32
    gradients: never the fastest, it is among the leanest strategies the search keeps for
    a training call, so a plan takes it when nothing else fits."""
    from rlhf_operator.planner.search import Candidates
    from rlhf_operator.planner.simulate import Evaluator

    job = make_job("llama2-7b", gpus=8, algorithm="grpo")
    w = workload_for(job)
    cluster = Cluster(1, 8, load_profile("H100"))
    call, mesh = w.call("actor_train"), Mesh(0, 8)
    for base in (Strategy(8, 1, 1, 4), Strategy(4, 2, 1, 4, recompute=True)):
        zero2 = dataclasses.replace(base, zero_stage=2)
        one, two = (call_cost(w, call, cluster, mesh, s) for s in (base, zero2))
        assert two.memory_bytes < one.memory_bytes and two.seconds > one.seconds
    kept = Candidates(Evaluator(w, cluster)).layouts[("actor_train", (8, False))]
    assert any(s.zero_stage == 2 for s in kept), kept
    assert kept[0].zero_stage == 1  # the fastest
