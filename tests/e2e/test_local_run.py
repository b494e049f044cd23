"""`rlhfctl run` end to end: real worker processes, the gRPC control plane, gloo.

Each test runs a tiny job for a couple of iterations on 2-4 CPU slots.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from safetensors.torch import load_file

from rlhf_operator.api.manifests import load_jobs
from rlhf_operator.contract.checkpoints import latest_complete
from rlhf_operator.contract.plan import Offload
from rlhf_operator.coordinator.local import JobFailed, LocalRun
from rlhf_operator.coordinator.outputs import IterationRecord, OutputDir
from rlhf_operator.planner import plan_job

from .conftest import GRPO_TP2_GENERATION, tiny_job, write_job

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.timeout(900)


def rlhfctl_run(job: Path, out: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "rlhf_operator.cli.main",
            "run",
            str(job),
            "-o",
            str(out),
            "--no-metrics",
            *extra,
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )


def local_run(job_path: Path, out: Path, **kwargs: Any) -> LocalRun:
    jobs, problems = load_jobs(str(job_path))
    assert not problems, problems
    job = jobs[0]
    return LocalRun(
        job, plan_job(job), job_path.parent, OutputDir(out), metrics_port=None, **kwargs
    )


def test_ppo_colocated_runs_and_writes_the_output_contract(job_file: Any, tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = rlhfctl_run(job_file(tiny_job("ppo-colocated")), out)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    summary = json.loads(result.stdout)
    assert summary["status"] == "Succeeded" and summary["iterations"] == 2
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in lines] == [1, 2]
    for record in lines:
        for key in ("reward_mean", "kl", "seconds", "tokens_per_second", "calls"):
            assert key in record
        assert set(record["calls"]) == {
            "actor_gen",
            "ref_inf",
            "reward_inf",
            "critic_inf",
            "actor_train",
            "critic_train",
        }
        assert all(
            c["seconds"] > 0 and c["estimated_seconds"] > 0 for c in record["calls"].values()
        )
        assert 0.0 <= record["reward_mean"] <= 1.0
    assert latest_complete(out / "checkpoints").iteration == 2  # type: ignore[union-attr]
    # The exported actor loads with transformers and generates.
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(out / "export")
    tokenizer = AutoTokenizer.from_pretrained(out / "export")
    ids = tokenizer("the red cat", return_tensors="pt").input_ids
    assert model.generate(ids, max_new_tokens=3, do_sample=False).shape[1] == ids.shape[1] + 3


def test_grpo_manual_plan_reallocates_between_layouts(job_file: Any, tmp_path: Path) -> None:
    job = tiny_job(
        "grpo-manual",
        "grpo",
        algorithm={"name": "grpo", "grpo": {"groupSize": 2}},
        placement=GRPO_TP2_GENERATION,
    )
    out = tmp_path / "out"
    result = rlhfctl_run(job_file(job), out)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(lines) == 2 and all("reallocation_seconds" in r for r in lines)


def test_ppo_split_plan_on_four_slots(job_file: Any, tmp_path: Path) -> None:
    job = tiny_job(
        "ppo-split",
        "ppo",
        slots=4,
        data={"batchSize": 4},
        placement={
            "strategy": "manual",
            "calls": {
                "actor_gen": {"mesh": "0:0-1", "dp": 2},
                "ref_inf": {"mesh": "0:2"},
                "reward_inf": {"mesh": "0:3"},
                "critic_inf": {"mesh": "0:2-3", "tp": 2},
                "actor_train": {"mesh": "0:0-3", "dp": 2, "tp": 2},
                "critic_train": {"mesh": "0:2-3", "dp": 2},
            },
        },
    )
    out = tmp_path / "out"
    result = rlhfctl_run(job_file(job), out)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(lines) == 2
    assert sum(r["reallocation_bytes"] for r in lines) > 0


def assert_same_export(got: Path, want: Path) -> None:
    """The two runs exported bit-identical actors."""
    a, b = (load_file(str(d / "export" / "model.safetensors")) for d in (got, want))
    assert a.keys() == b.keys()
    for name in b:
        assert (a[name] == b[name]).all(), name


# The demo's reward, except that once armed (a file beside the marker) the first worker
# to score a sample SIGKILLs itself: a worker lost in the middle of an iteration, at a
# point that does not depend on timing. The marker makes it happen once per job.
DYING_REWARD = """
import os, signal
from rlhf_worker.rewards import vowel_fraction

def score(prompt, response):
    marker = os.environ.get("KILL_MARKER")
    if marker and os.path.exists(marker + ".armed"):
        try:
            os.close(os.open(marker, os.O_CREAT | os.O_EXCL))
        except FileExistsError:
            pass
        else:
            os.kill(os.getpid(), signal.SIGKILL)
    return vowel_fraction(prompt, response)
"""


def test_killed_worker_is_restarted_and_the_run_ends_with_the_same_weights(
    job_file: Any, tmp_path: Path
) -> None:
    (tmp_path / "dying_reward.py").write_text(DYING_REWARD)
    job = tiny_job("killed", training={"iterations": 3})
    job["spec"]["models"]["reward"] = {"rewardFunction": "dying_reward:score"}
    path = job_file(job)
    reference = local_run(path, tmp_path / "reference")
    reference.run()

    marker = tmp_path / "killed.marker"
    run = local_run(path, tmp_path / "killed", extra_env={"KILL_MARKER": str(marker)})

    def arm_after_the_first_iteration(record: IterationRecord) -> None:
        if record.iteration == 1:
            # A worker dies scoring iteration 2's responses, after its generation.
            Path(f"{marker}.armed").touch()

    run.on_iteration = arm_after_the_first_iteration
    summary = run.run()
    assert marker.exists()  # a worker really died
    assert summary["restarts"] == 1
    assert summary["iterations"] == 3
    assert_same_export(tmp_path / "killed", tmp_path / "reference")


def test_offloading_the_reference_model_between_calls_changes_no_result(
    job_file: Any, tmp_path: Path
) -> None:
    path = job_file(
        tiny_job("offload", "grpo", algorithm={"name": "grpo", "grpo": {"groupSize": 2}})
    )
    reference = local_run(path, tmp_path / "reference")
    reference.run()

    # The plan keeps the frozen reference model in host memory between its calls (as the
    # planner does when devices are full): loaded then offloaded, restored before ref_inf
    # and offloaded after it every iteration.
    run = local_run(path, tmp_path / "offload")
    run.plan.offloads = [Offload("ref", "ref_inf", 1, 0.0)]
    records: list[IterationRecord] = []
    run.on_iteration = records.append
    assert run.run()["iterations"] == 2
    assert all("offload_seconds" in r.extra for r in records)
    assert "offload_seconds" not in json.loads(
        (tmp_path / "reference" / "metrics.jsonl").read_text().splitlines()[0]
    ).get("extra", {})
    assert_same_export(tmp_path / "offload", tmp_path / "reference")


def test_recomputing_activations_as_the_plan_says_changes_no_result(
    job_file: Any, tmp_path: Path
) -> None:
    path = job_file(
        tiny_job("recompute", "grpo", algorithm={"name": "grpo", "grpo": {"groupSize": 2}})
    )
    local_run(path, tmp_path / "reference").run()
    # The plan recomputes the actor's activations in its training call (the planner's
    # choice when memory needs it): the workers run each layer's forward again in the
    # backward, and the run is the same.
    run = local_run(path, tmp_path / "recompute")
    train = run.plan.call("actor_train")
    assert not train.recompute
    train.recompute = True
    records: list[IterationRecord] = []
    run.on_iteration = records.append
    assert run.run()["iterations"] == 2
    assert [r.extra["actor_train/recompute"] for r in records] == [1.0, 1.0]
    reference = (tmp_path / "reference" / "metrics.jsonl").read_text().splitlines()
    assert json.loads(reference[0])["actor_train/recompute"] == 0.0
    assert_same_export(tmp_path / "recompute", tmp_path / "reference")


def test_in_place_resharding_changes_no_result_and_copies_nothing_locally(
    job_file: Any, tmp_path: Path
) -> None:
    # The actor trains under tp2 and generates under dp2 on the same two slots: each rank's
    # half of every split weight fits inside the whole it generates with.
    placement = {
        "strategy": "manual",
        "calls": {
            "actor_gen": {"mesh": "0:0-1", "dp": 2},
            "ref_inf": {"mesh": "0:1"},
            "reward_inf": {"mesh": "0:0"},
            "actor_train": {"mesh": "0:0-1", "tp": 2},
        },
    }
    grpo = {"name": "grpo", "grpo": {"groupSize": 2}}
    runs = {}
    for in_place in (False, True):
        job = tiny_job("inplace", "grpo", algorithm=grpo, placement=placement)
        job["spec"]["placement"]["inPlaceResharding"] = in_place
        out = tmp_path / f"in-place-{in_place}"
        result = rlhfctl_run(job_file(job), out)
        assert result.returncode == 0, result.stderr[-3000:]
        runs[in_place] = OutputDir(out).read_metrics()
    assert_same_export(tmp_path / "in-place-True", tmp_path / "in-place-False")
    for copied in (runs[False], runs[True]):
        assert len(copied) == 2 and all(r["reallocation_bytes"] > 0 for r in copied)
    # Each rank keeps half of every split weight: copied every iteration, or moved into
    # the generation copy once.
    copied = [r["reallocation_local_bytes"] for r in runs[False]]
    assert copied[0] == copied[1] > 0
    assert [r["reallocation_local_bytes"] for r in runs[True]] == [copied[0], 0.0]


def test_checkpoint_without_commit_marker_is_ignored(job_file: Any, tmp_path: Path) -> None:
    path = job_file(tiny_job("resume"))
    out = tmp_path / "out"
    local_run(path, out).run()
    (out / "checkpoints" / "iter-00000002" / "COMMITTED").unlink()
    assert latest_complete(out / "checkpoints").iteration == 1  # type: ignore[union-attr]
    summary = local_run(path, out).run()
    # Iteration 2 ran again from checkpoint 1: one consistent record per iteration.
    assert [r["iteration"] for r in OutputDir(out).read_metrics()] == [1, 2]
    assert summary["iterations"] == 2
    assert latest_complete(out / "checkpoints").iteration == 2  # type: ignore[union-attr]


def test_bad_inputs_fail_with_one_clear_line(job_file: Any, tmp_path: Path) -> None:
    missing_model = tiny_job("missing-model")
    missing_model["spec"]["models"]["actor"]["source"] = {"path": str(tmp_path / "nowhere")}
    result = rlhfctl_run(job_file(missing_model), tmp_path / "a")
    assert result.returncode == 1
    assert "model directory" in result.stderr and "does not exist" in result.stderr
    assert "Traceback" not in result.stderr

    unreadable = tiny_job("unreadable", data={"prompts": {"path": str(tmp_path / "nope.jsonl")}})
    result = rlhfctl_run(job_file(unreadable), tmp_path / "b")
    assert result.returncode == 1
    assert "nope.jsonl" in result.stderr and "Traceback" not in result.stderr

    bad = write_job(tmp_path / "bad.yaml", {"kind": "RLHFJob"})
    result = rlhfctl_run(bad, tmp_path / "c")
    assert result.returncode == 1 and "apiVersion: expected rlhf.dev/v1alpha1" in result.stderr


def test_reward_function_that_raises_fails_cleanly_and_keeps_checkpoints(
    job_file: Any, tmp_path: Path
) -> None:
    (tmp_path / "flaky_reward.py").write_text(
        "import os\n"
        "def score(prompt, response):\n"
        "    if os.environ.get('FLAKY_REWARD_FAIL'):\n"
        "        raise ValueError('reward service unavailable')\n"
        "    return float(len(response) % 3)\n"
    )
    job = tiny_job("flaky")
    job["spec"]["models"]["reward"] = {"rewardFunction": "flaky_reward:score"}
    job["spec"]["training"]["iterations"] = 1
    path = job_file(job)
    out = tmp_path / "out"
    local_run(path, out).run()
    committed = sorted(p.name for p in (out / "checkpoints").iterdir())

    job["spec"]["training"]["iterations"] = 2
    write_job(path, job)
    with pytest.raises(JobFailed, match=r"flaky_reward:score.*reward service unavailable"):
        local_run(path, out, extra_env={"FLAKY_REWARD_FAIL": "1"}).run()
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == committed
    assert latest_complete(out / "checkpoints").iteration == 1  # type: ignore[union-attr]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "Failed" and "reward service unavailable" in summary["error"]


def test_ctrl_c_stops_cleanly_with_a_resumable_checkpoint(job_file: Any, tmp_path: Path) -> None:
    path = job_file(
        tiny_job("interrupted", training={"iterations": 4}, checkpoint={"interval": 10})
    )
    out = tmp_path / "out"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "rlhf_operator.cli.main",
            "run",
            str(path),
            "-o",
            str(out),
            "--no-metrics",
        ],
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stderr is not None
    for line in proc.stderr:
        if "iter 1/4" in line:
            proc.send_signal(signal.SIGINT)  # as a terminal's Ctrl-C
            break
    rest = proc.stderr.read()
    assert proc.wait(timeout=300) == 130, rest
    assert "run the same command to resume" in rest and "Traceback" not in rest
    done = latest_complete(out / "checkpoints")
    assert done is not None and done.iteration in (1, 2)
    result = rlhfctl_run(path, out)
    assert result.returncode == 0, result.stderr[-2000:]
    assert [r["iteration"] for r in OutputDir(out).read_metrics()] == [1, 2, 3, 4]


def test_reward_rises_on_the_demo_task(job_file: Any, tmp_path: Path) -> None:
    """The demo's task (vowel fraction), shortened to CI size: GRPO visibly learns in a dozen
    iterations on the small model (the demo itself runs PPO on the tiny preset for 30)."""
    job = tiny_job(
        "learns",
        "grpo",
        algorithm={"name": "grpo", "grpo": {"groupSize": 4, "klCoef": 0.0}},
        data={"batchSize": 4},
        rollout={"maxNewTokens": 12},
        training={"iterations": 16, "minibatches": 1, "actorLearningRate": 5e-3},
        checkpoint={"interval": 100},
    )
    del job["spec"]["models"]["ref"]  # no KL term: the reference model is not needed
    out = tmp_path / "out"
    summary = local_run(job_file(job), out).run()
    rewards = [r["reward_mean"] for r in OutputDir(out).read_metrics()]
    assert summary["iterations"] == 16
    first, last = sum(rewards[:3]) / 3, sum(rewards[-3:]) / 3
    # Sampling and training are deterministic for a seed, so this curve is the same every run.
    assert last > first + 0.1, rewards


@pytest.mark.parametrize("algo", ["safe-rlhf", "remax", "rloo"])
def test_other_algorithms_run_end_to_end(job_file: Any, tmp_path: Path, algo: str) -> None:
    """Safe-RLHF (reward and cost, two-output critic), ReMax (greedy baseline) and RLOO."""
    job = tiny_job(
        f"algo-{algo}", "ppo" if algo == "safe-rlhf" else algo, training={"iterations": 1}
    )
    job["spec"]["algorithm"] = {"name": algo}
    if algo == "safe-rlhf":
        job["spec"]["models"]["cost"] = {"rewardFunction": "rlhf_worker.rewards:digit_fraction"}
    if algo == "rloo":
        job["spec"]["data"]["batchSize"] = 2  # 2 prompts x groupSize 4
    summary = local_run(job_file(job), tmp_path / "out").run()
    assert summary["status"] == "Succeeded" and summary["iterations"] == 1
