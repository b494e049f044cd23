from __future__ import annotations

import json

from rlhf_operator.contract.plan import Plan
from rlhf_operator.planner import plan_job

from .planner_jobs import make_job


def test_json_round_trip_and_contract_fields():
    plan = plan_job(make_job("llama2-7b", gpus=16), max_steps=200)
    text = plan.to_json()
    again = Plan.from_json(text)
    assert again == plan
    data = json.loads(text)
    for key in ("iteration_seconds", "tokens_per_second", "pflops", "search_seconds"):
        assert isinstance(data[key], float)
    assert set(data["baselines"]) == {"colocated", "split", "heuristic"}
    for call in data["calls"]:
        assert {
            "name",
            "mesh",
            "dp",
            "tp",
            "pp",
            "micro_batches",
            "seconds",
            "memory_bytes",
        } <= set(call)
        assert all(isinstance(p, list) and len(p) == 2 for p in call["mesh"])
    for r in data["reallocations"]:
        assert {"role", "from_call", "to_call", "bytes", "seconds"} <= set(r)


def test_local_mode_uses_cpu_slots():
    plan = plan_job(
        make_job("tiny", gpus=None, local_slots=2, batch=16, minibatches=2), max_steps=50
    )
    assert plan.gpu_type == "cpu" and plan.nodes == 1 and plan.gpus_per_node == 2
