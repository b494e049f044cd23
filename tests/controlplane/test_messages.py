"""Commands and reports survive the trip through their protobuf form; bad ones say why."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from rlhf_operator.api.job import RLHFJob
from rlhf_operator.contract.sharding import Layout
from rlhf_operator.controlplane import messages as m
from rlhf_operator.controlplane.v1 import control_pb2 as pb
from rlhf_operator.planner import plan_job
from tests.contract.launches import worker_settings

ROOT = Path(__file__).resolve().parents[2]
TRAIN = Layout(ranks=(0, 1, 2, 3), pp=2, dp=1, tp=2)
GEN = Layout(ranks=(0, 1, 2, 3), pp=1, dp=4, tp=1)
JOB = RLHFJob.model_validate(yaml.safe_load((ROOT / "examples/tiny-ppo.yaml").read_text()))

COMMANDS = [
    m.InitProcessGroup(timeout_s=60.0),
    m.Prepare(job=JOB, plan=plan_job(JOB), base_dir="/jobs", output_dir="/out/tiny-ppo"),
    m.LoadRole(role="actor", layout=TRAIN, model_source="/models/tiny"),
    m.RunCall(
        name="actor_gen", iteration=7, inputs=("prompts",), outputs=("responses", "logprobs")
    ),
    m.Reallocate(role="actor", src=TRAIN, dst=GEN),
    m.MoveData(key="responses", src_call="actor_gen", dst_call="actor_train"),
    m.Release(role="actor", layout=GEN),
    m.OffloadRole(role="ref"),
    m.RestoreRole(role="ref"),
    m.EndIteration(iteration=7),
    m.SaveCheckpoint(path="/ckpt/iter-7", iteration=7),
    m.RestoreCheckpoint(path="/ckpt/iter-7", iteration=7),
    m.Export(path="/out/actor", role="actor"),
    m.Shutdown(reason="done"),
    m.Custom(name="echo"),
]


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: type(c).__name__)
def test_every_command_round_trips(command):
    envelope = m.Envelope(42, command, {"micro_batches": 2, "keys": ["a"]}, deadline_s=30.0)
    wire = pb.Command.FromString(m.command_to_pb(envelope).SerializeToString())
    assert m.command_from_pb(wire) == envelope


def test_handler_names_are_the_command_kinds_or_the_custom_name():
    names = [m.handler_name(c) for c in COMMANDS]
    assert names == [
        "init_process_group",
        "prepare",
        "load_role",
        "run_call",
        "reallocate",
        "move_data",
        "release",
        "offload_role",
        "restore_role",
        "end_iteration",
        "save_checkpoint",
        "restore_checkpoint",
        "export",
        "shutdown",
        "echo",
    ]
    # The handler name is the oneof field the command travels in.
    for command in COMMANDS[:-1]:
        assert m.command_to_pb(m.Envelope(1, command)).WhichOneof("kind") == m.handler_name(command)


def test_empty_args_travel_as_nothing():
    msg = m.command_to_pb(m.Envelope(1, m.Shutdown()))
    assert msg.args == b""
    assert m.command_from_pb(msg).args == {}


def test_layouts_must_add_up():
    with pytest.raises(ValueError, match="needs 4 ranks, got 3"):
        Layout(ranks=(0, 1, 2), pp=2, tp=2)
    with pytest.raises(ValueError, match="ranks repeat"):
        Layout(ranks=(0, 0), dp=2)
    with pytest.raises(ValueError, match="must be >= 1"):
        Layout(ranks=(), pp=0)


def test_a_bad_prepare_names_what_is_wrong():
    bad_job = pb.Command(command_id=8, prepare=pb.Prepare(job=b'{"kind": "RLHFJob"}'))
    with pytest.raises(m.MessageError, match="prepare's job is not a valid RLHFJob"):
        m.command_from_pb(bad_job)
    job = m.encode_json(JOB.to_manifest(), "job")
    bad_plan = pb.Command(command_id=9, prepare=pb.Prepare(job=job, plan=b'{"version": 1}'))
    with pytest.raises(m.MessageError, match="prepare's plan is not a plan"):
        m.command_from_pb(bad_plan)


def test_a_registration_says_who_the_launch_settings_made():
    settings = worker_settings(
        job_id="job-a",
        world_size=8,
        rank=5,
        local_rank=1,
        node_rank=2,
        local_world_size=4,
        device="cuda",
        token="t0k",
    )
    reg = m.Registration.of(settings, host="node-2", pid=77)
    assert (reg.job_id, reg.rank, reg.world_size, reg.local_rank, reg.node_rank) == (
        "job-a",
        5,
        8,
        1,
        2,
    )
    assert (reg.host, reg.pid, reg.device, reg.token) == ("node-2", 77, "cuda", "t0k")
    wire = pb.RegisterRequest.FromString(m.registration_to_pb(reg).SerializeToString())
    assert m.registration_from_pb(wire) == reg
    assert "t0k" not in repr(reg)


def test_malformed_wire_commands_are_clear_errors():
    bad_json = pb.Command(command_id=3, args=b"{not json", custom=pb.Custom(name="x"))
    with pytest.raises(m.MessageError, match="args of command 3 is not valid JSON"):
        m.command_from_pb(bad_json)
    not_object = pb.Command(command_id=4, args=b"[1, 2]", custom=pb.Custom(name="x"))
    with pytest.raises(m.MessageError, match="must be a JSON object, got list"):
        m.command_from_pb(not_object)
    with pytest.raises(m.MessageError, match="has no kind"):
        m.command_from_pb(pb.Command(command_id=5))
    bad_layout = pb.Command(
        command_id=6,
        load_role=pb.LoadRole(role="actor", layout=pb.Layout(ranks=[0], pp=2, dp=1, tp=1)),
    )
    with pytest.raises(m.MessageError, match="needs 2 ranks"):
        m.command_from_pb(bad_layout)


def test_a_custom_command_cannot_borrow_a_core_command_s_name():
    with pytest.raises(m.MessageError, match="'prepare' is a core command's name"):
        m.command_to_pb(m.Envelope(1, m.Custom("prepare")))
    assert {"prepare", "move_data", "release", "end_iteration"} <= m.CORE_NAMES


def test_args_that_are_not_json_are_refused_when_sent():
    with pytest.raises(m.MessageError, match="args of command 'echo' is not JSON-serialisable"):
        m.command_to_pb(m.Envelope(1, m.Custom("echo"), {"x": object()}))


def test_reports_round_trip():
    outcome = m.Outcome(9, ok=False, error="ValueError: no", output={"a": 1}, seconds=0.5)
    assert m.report_from_pb(m.outcome_to_pb(outcome)) == outcome
    progress = m.Progress(9, "half way", 0.5)
    assert m.report_from_pb(m.progress_to_pb(progress)) == progress
    metrics = m.Metrics(9, {"loss": 1.25, "kl": 0.01})
    assert m.report_from_pb(m.metrics_to_pb(metrics)) == metrics
    assert m.report_from_pb(pb.WorkerMessage(hello=pb.Hello(rank=1))) is None
