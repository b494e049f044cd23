"""Commands and reports survive the trip through their protobuf form; bad ones say why."""

from __future__ import annotations

import pytest

from rlhf_operator.controlplane import messages as m
from rlhf_operator.controlplane.v1 import control_pb2 as pb

TRAIN = m.Layout(ranks=(0, 1, 2, 3), pp=2, dp=1, tp=2)
GEN = m.Layout(ranks=(0, 1, 2, 3), pp=1, dp=4, tp=1)

COMMANDS = [
    m.InitProcessGroup(timeout_s=60.0),
    m.LoadRole(role="actor", layout=TRAIN, model_source="/models/tiny"),
    m.RunCall(
        name="actor_gen", iteration=7, inputs=("prompts",), outputs=("responses", "logprobs")
    ),
    m.Reallocate(role="actor", src=TRAIN, dst=GEN),
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
        "load_role",
        "run_call",
        "reallocate",
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
    with pytest.raises(m.MessageError, match="needs 4 ranks, got 3"):
        m.Layout(ranks=(0, 1, 2), pp=2, tp=2)
    with pytest.raises(m.MessageError, match="ranks repeat"):
        m.Layout(ranks=(0, 0), dp=2)
    with pytest.raises(m.MessageError, match="must be >= 1"):
        m.Layout(ranks=(), pp=0)


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
