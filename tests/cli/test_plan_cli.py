"""`rlhfctl plan` on the examples (table and JSON) and on jobs that cannot be planned."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rlhf_operator.cli.main import main

EXAMPLES = sorted(Path(__file__).resolve().parents[2].joinpath("examples").glob("*.yaml"))


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_plan_table(path, capsys):
    assert main(["plan", str(path), "--search-seconds", "5"]) == 0
    out = capsys.readouterr().out
    assert "iteration" in out and "PFLOP/s" in out
    assert "actor_gen" in out and "actor_train" in out
    for baseline in ("colocated", "split", "heuristic"):
        assert baseline in out


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_plan_json(path, capsys):
    assert main(["plan", str(path), "--format", "json", "--search-seconds", "5"]) == 0
    data = json.loads(capsys.readouterr().out)
    for key in ("iteration_seconds", "tokens_per_second", "pflops", "search_seconds"):
        assert data[key] >= 0
    devices = {(n, g) for n in range(data["nodes"]) for g in range(data["gpus_per_node"])}
    for call in data["calls"]:
        assert {tuple(p) for p in call["mesh"]} <= devices
        assert call["dp"] * call["tp"] * call["pp"] == len(call["mesh"])
        assert call["micro_batches"] >= 1 and call["seconds"] > 0 and call["memory_bytes"] > 0
    assert set(data["baselines"]) == {"colocated", "split", "heuristic"}
    for r in data["reallocations"]:
        assert r["bytes"] > 0 and r["seconds"] > 0


def test_overrides_change_the_cluster(capsys):
    path = str(EXAMPLES[0].with_name("llama7b-ppo-8gpu.yaml"))
    args = ["plan", path, "--gpus", "16", "--gpus-per-node", "8", "--gpu-type", "H200"]
    assert main([*args, "--format", "json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert (data["nodes"], data["gpus_per_node"], data["gpu_type"]) == (2, 8, "H200")


def test_infeasible_job_exits_1_with_what_is_needed(capsys):
    path = str(EXAMPLES[0].with_name("llama70b-ppo-64gpu.yaml"))
    assert main(["plan", path, "--gpus", "8"]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "RLHFJob/llama70b-ppo: does not fit in memory on any plan" in captured.err
    assert "at least" in captured.err and "H100 GPUs" in captured.err
    assert "Traceback" not in captured.err


def test_unknown_profile_and_bad_manifest(tmp_path, capsys):
    path = str(EXAMPLES[0].with_name("tiny-ppo.yaml"))
    assert main(["plan", path, "--gpu-type", "nope"]) == 1
    assert "no device profile 'nope'" in capsys.readouterr().err
    bad = tmp_path / "bad.yaml"
    bad.write_text("apiVersion: rlhf.dev/v1alpha1\nkind: RLHFJob\nmetadata: {name: x}\nspec: {}\n")
    assert main(["plan", str(bad)]) == 1
    assert "bad.yaml[0]" in capsys.readouterr().err


def test_bad_gpus_argument(capsys):
    with pytest.raises(SystemExit):
        main(["plan", "x.yaml", "--gpus", "0"])
    assert "positive integer" in capsys.readouterr().err
