"""The control plane's commands and reports as plain dataclasses, and their wire form.

Both sides speak these: the coordinator's plan executor builds commands (one
per schedule step), the worker's handlers receive them, and only this module
touches the protobuf types. Every core step has its own typed command; `Custom`
is the extension point (test handlers, later features), dispatched by name with
its parameters as a JSON object (`Envelope.args`). Each command has a handler
name (the key of the worker's handler table): the command's `NAME`, which is
also the protobuf oneof field it travels in, or `Custom.name`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, get_args

from pydantic import ValidationError

from ..api.job import RLHFJob
from ..contract.launch import WorkerSettings
from ..contract.plan import Plan
from ..contract.sharding import Layout
from .v1 import control_pb2 as pb


class MessageError(ValueError):
    """A malformed control message (bad JSON, a layout that does not add up...)."""


@dataclass(frozen=True)
class Registration:
    """What a worker says about itself when it registers (its launch settings' identity)."""

    job_id: str
    rank: int
    world_size: int
    local_rank: int
    node_rank: int
    host: str
    pid: int
    device: str
    token: str = field(repr=False)  # never in logs or reprs

    @classmethod
    def of(cls, settings: WorkerSettings, host: str, pid: int) -> Registration:
        """The registration of the worker `settings` launched (its token already read)."""
        if settings.token is None:
            raise MessageError(f"{settings.who}: no token to register with")
        return cls(
            job_id=settings.job_id,
            rank=settings.rank,
            world_size=settings.world_size,
            local_rank=settings.local_rank,
            node_rank=settings.node_rank,
            host=host,
            pid=pid,
            device=settings.device,
            token=settings.token,
        )


def registration_to_pb(reg: Registration) -> pb.RegisterRequest:
    return pb.RegisterRequest(
        job_id=reg.job_id,
        rank=reg.rank,
        world_size=reg.world_size,
        local_rank=reg.local_rank,
        node_rank=reg.node_rank,
        host=reg.host,
        pid=reg.pid,
        device=reg.device,
        token=reg.token,
    )


def registration_from_pb(msg: pb.RegisterRequest) -> Registration:
    return Registration(
        job_id=msg.job_id,
        rank=msg.rank,
        world_size=msg.world_size,
        local_rank=msg.local_rank,
        node_rank=msg.node_rank,
        host=msg.host,
        pid=msg.pid,
        device=msg.device,
        token=msg.token,
    )


@dataclass(frozen=True)
class InitProcessGroup:
    """Join the job's torch.distributed process group (gloo on CPU, nccl on GPU)."""

    NAME: ClassVar[str] = "init_process_group"
    timeout_s: float = 300.0


@dataclass(frozen=True)
class Prepare:
    """Take the job and its plan: build or find the models, create every layout's groups."""

    NAME: ClassVar[str] = "prepare"
    job: RLHFJob
    plan: Plan
    base_dir: str  # relative paths of the job (prompts, reward modules) resolve here
    output_dir: str


@dataclass(frozen=True)
class LoadRole:
    """Build a role's model shard for this rank under `layout`, from `model_source`."""

    NAME: ClassVar[str] = "load_role"
    role: str
    layout: Layout
    model_source: str


@dataclass(frozen=True)
class RunCall:
    """Run one model function call (e.g. actor_gen) of an iteration."""

    NAME: ClassVar[str] = "run_call"
    name: str
    iteration: int
    inputs: tuple[str, ...] = ()
    outputs: tuple[str, ...] = ()


@dataclass(frozen=True)
class Reallocate:
    """Move a role's parameters from one layout to another."""

    NAME: ClassVar[str] = "reallocate"
    role: str
    src: Layout
    dst: Layout


@dataclass(frozen=True)
class MoveData:
    """Redistribute one data key from the ranks of the call that made it to those of the call
    that needs it (worker to worker over torch.distributed)."""

    NAME: ClassVar[str] = "move_data"
    key: str
    src_call: str
    dst_call: str


@dataclass(frozen=True)
class Release:
    """Drop a role's transient copy under `layout` after its last call of the iteration."""

    NAME: ClassVar[str] = "release"
    role: str
    layout: Layout


@dataclass(frozen=True)
class OffloadRole:
    """Send a frozen role's home shards back to host memory after its last use."""

    NAME: ClassVar[str] = "offload_role"
    role: str


@dataclass(frozen=True)
class RestoreRole:
    """Bring an offloaded role's home shards back onto their devices before its first use."""

    NAME: ClassVar[str] = "restore_role"
    role: str


@dataclass(frozen=True)
class EndIteration:
    """Drop the iteration's data on every rank."""

    NAME: ClassVar[str] = "end_iteration"
    iteration: int


@dataclass(frozen=True)
class SaveCheckpoint:
    NAME: ClassVar[str] = "save_checkpoint"
    path: str
    iteration: int


@dataclass(frozen=True)
class RestoreCheckpoint:
    NAME: ClassVar[str] = "restore_checkpoint"
    path: str
    iteration: int


@dataclass(frozen=True)
class Export:
    """Write a role's full model in Hugging Face format to `path`."""

    NAME: ClassVar[str] = "export"
    path: str
    role: str = "actor"


@dataclass(frozen=True)
class Shutdown:
    """Release everything and exit the worker process (exit status 0)."""

    NAME: ClassVar[str] = "shutdown"
    reason: str = ""


@dataclass(frozen=True)
class Custom:
    """An extension command dispatched by `name` (test handlers, later features)."""

    name: str


Command = (
    InitProcessGroup
    | Prepare
    | LoadRole
    | RunCall
    | Reallocate
    | MoveData
    | Release
    | OffloadRole
    | RestoreRole
    | EndIteration
    | SaveCheckpoint
    | RestoreCheckpoint
    | Export
    | Shutdown
    | Custom
)


# The handler names of the typed commands (a Custom command may not take one).
CORE_NAMES = frozenset(kind.NAME for kind in get_args(Command) if kind is not Custom)


def handler_name(command: Command) -> str:
    """The key of the worker's handler table that runs `command`."""
    return command.name if isinstance(command, Custom) else command.NAME


@dataclass(frozen=True)
class Envelope:
    """A command as it travels: its id, deadline (0 = none) and JSON args."""

    command_id: int
    command: Command
    args: dict[str, Any] = field(default_factory=dict)
    deadline_s: float = 0.0


@dataclass(frozen=True)
class Outcome:
    """A worker's answer to one command."""

    command_id: int
    ok: bool
    error: str = ""
    output: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0


@dataclass(frozen=True)
class Progress:
    command_id: int
    message: str
    fraction: float = -1.0  # negative: unknown


@dataclass(frozen=True)
class Metrics:
    command_id: int
    values: dict[str, float]


# ---- JSON payloads ---------------------------------------------------------------


def encode_json(obj: Mapping[str, Any] | None, what: str) -> bytes:
    """A JSON object as compact UTF-8 bytes (b"" for empty); `what` names it in errors."""
    if not obj:
        return b""
    try:
        return json.dumps(dict(obj), separators=(",", ":"), sort_keys=True).encode()
    except (TypeError, ValueError) as err:
        raise MessageError(f"{what} is not JSON-serialisable: {err}") from None


def decode_json(data: bytes, what: str) -> dict[str, Any]:
    """The JSON object in `data` ({} for empty); a clear error for anything else."""
    if not data:
        return {}
    try:
        obj = json.loads(data)
    except (UnicodeDecodeError, ValueError) as err:
        raise MessageError(f"{what} is not valid JSON: {err}") from None
    if not isinstance(obj, dict):
        raise MessageError(f"{what} must be a JSON object, got {type(obj).__name__}")
    return obj


# ---- commands <-> protobuf -------------------------------------------------------


def _layout_to_pb(layout: Layout) -> pb.Layout:
    return pb.Layout(ranks=list(layout.ranks), pp=layout.pp, dp=layout.dp, tp=layout.tp)


def _layout_from_pb(msg: pb.Layout) -> Layout:
    try:
        return Layout(ranks=tuple(msg.ranks), pp=msg.pp, dp=msg.dp, tp=msg.tp)
    except ValueError as err:
        raise MessageError(str(err)) from None


def _prepare_from_pb(msg: pb.Prepare) -> Prepare:
    try:
        job = RLHFJob.model_validate(decode_json(msg.job, "prepare's job"))
    except ValidationError as err:
        raise MessageError(f"prepare's job is not a valid RLHFJob: {err.errors()[0]}") from None
    try:
        plan = Plan.from_dict(decode_json(msg.plan, "prepare's plan"))
    except (KeyError, TypeError, ValueError) as err:
        raise MessageError(f"prepare's plan is not a plan: {err}") from None
    return Prepare(job, plan, msg.base_dir, msg.output_dir)


def command_to_pb(envelope: Envelope) -> pb.Command:
    """The wire form of a command envelope."""
    msg = pb.Command(
        command_id=envelope.command_id,
        deadline_seconds=envelope.deadline_s,
        args=encode_json(envelope.args, f"args of command {handler_name(envelope.command)!r}"),
    )
    c = envelope.command
    if isinstance(c, InitProcessGroup):
        msg.init_process_group.CopyFrom(pb.InitProcessGroup(timeout_seconds=c.timeout_s))
    elif isinstance(c, Prepare):
        msg.prepare.CopyFrom(
            pb.Prepare(
                job=encode_json(c.job.to_manifest(), "prepare's job"),
                plan=encode_json(c.plan.to_dict(), "prepare's plan"),
                base_dir=c.base_dir,
                output_dir=c.output_dir,
            )
        )
    elif isinstance(c, LoadRole):
        msg.load_role.CopyFrom(
            pb.LoadRole(role=c.role, layout=_layout_to_pb(c.layout), model_source=c.model_source)
        )
    elif isinstance(c, RunCall):
        msg.run_call.CopyFrom(
            pb.RunCall(
                name=c.name, iteration=c.iteration, inputs=list(c.inputs), outputs=list(c.outputs)
            )
        )
    elif isinstance(c, Reallocate):
        msg.reallocate.CopyFrom(
            pb.Reallocate(
                role=c.role, from_layout=_layout_to_pb(c.src), to_layout=_layout_to_pb(c.dst)
            )
        )
    elif isinstance(c, MoveData):
        msg.move_data.CopyFrom(pb.MoveData(key=c.key, src_call=c.src_call, dst_call=c.dst_call))
    elif isinstance(c, Release):
        msg.release.CopyFrom(pb.Release(role=c.role, layout=_layout_to_pb(c.layout)))
    elif isinstance(c, OffloadRole):
        msg.offload_role.CopyFrom(pb.OffloadRole(role=c.role))
    elif isinstance(c, RestoreRole):
        msg.restore_role.CopyFrom(pb.RestoreRole(role=c.role))
    elif isinstance(c, EndIteration):
        msg.end_iteration.CopyFrom(pb.EndIteration(iteration=c.iteration))
    elif isinstance(c, SaveCheckpoint):
        msg.save_checkpoint.CopyFrom(pb.SaveCheckpoint(path=c.path, iteration=c.iteration))
    elif isinstance(c, RestoreCheckpoint):
        msg.restore_checkpoint.CopyFrom(pb.RestoreCheckpoint(path=c.path, iteration=c.iteration))
    elif isinstance(c, Export):
        msg.export.CopyFrom(pb.Export(path=c.path, role=c.role))
    elif isinstance(c, Shutdown):
        msg.shutdown.CopyFrom(pb.Shutdown(reason=c.reason))
    elif isinstance(c, Custom):
        if not c.name:
            raise MessageError("a custom command needs a name")
        if c.name in CORE_NAMES:
            raise MessageError(f"{c.name!r} is a core command's name: send the command itself")
        msg.custom.CopyFrom(pb.Custom(name=c.name))
    else:  # pragma: no cover - the union above is exhaustive
        raise MessageError(f"unknown command type {type(c).__name__}")
    return msg


def command_from_pb(msg: pb.Command) -> Envelope:
    """A command envelope from its wire form; MessageError if it is malformed."""
    kind = msg.WhichOneof("kind")
    command: Command
    if kind == "init_process_group":
        command = InitProcessGroup(timeout_s=msg.init_process_group.timeout_seconds)
    elif kind == "prepare":
        command = _prepare_from_pb(msg.prepare)
    elif kind == "load_role":
        m = msg.load_role
        command = LoadRole(
            role=m.role, layout=_layout_from_pb(m.layout), model_source=m.model_source
        )
    elif kind == "run_call":
        r = msg.run_call
        command = RunCall(
            name=r.name, iteration=r.iteration, inputs=tuple(r.inputs), outputs=tuple(r.outputs)
        )
    elif kind == "reallocate":
        a = msg.reallocate
        command = Reallocate(
            role=a.role, src=_layout_from_pb(a.from_layout), dst=_layout_from_pb(a.to_layout)
        )
    elif kind == "move_data":
        d = msg.move_data
        command = MoveData(key=d.key, src_call=d.src_call, dst_call=d.dst_call)
    elif kind == "release":
        command = Release(role=msg.release.role, layout=_layout_from_pb(msg.release.layout))
    elif kind == "offload_role":
        command = OffloadRole(role=msg.offload_role.role)
    elif kind == "restore_role":
        command = RestoreRole(role=msg.restore_role.role)
    elif kind == "end_iteration":
        command = EndIteration(iteration=msg.end_iteration.iteration)
    elif kind == "save_checkpoint":
        command = SaveCheckpoint(
            path=msg.save_checkpoint.path, iteration=msg.save_checkpoint.iteration
        )
    elif kind == "restore_checkpoint":
        r2 = msg.restore_checkpoint
        command = RestoreCheckpoint(path=r2.path, iteration=r2.iteration)
    elif kind == "export":
        command = Export(path=msg.export.path, role=msg.export.role)
    elif kind == "shutdown":
        command = Shutdown(reason=msg.shutdown.reason)
    elif kind == "custom":
        command = Custom(name=msg.custom.name)
    else:
        raise MessageError(f"command {msg.command_id} has no kind (a newer coordinator?)")
    args = decode_json(msg.args, f"args of command {msg.command_id}")
    return Envelope(msg.command_id, command, args, msg.deadline_seconds)


# ---- worker reports <-> protobuf -------------------------------------------------


def outcome_to_pb(outcome: Outcome) -> pb.WorkerMessage:
    return pb.WorkerMessage(
        result=pb.Result(
            command_id=outcome.command_id,
            ok=outcome.ok,
            error=outcome.error,
            output=encode_json(outcome.output, f"output of command {outcome.command_id}"),
            seconds=outcome.seconds,
        )
    )


def outcome_from_pb(msg: pb.Result) -> Outcome:
    return Outcome(
        command_id=msg.command_id,
        ok=msg.ok,
        error=msg.error,
        output=decode_json(msg.output, f"output of command {msg.command_id}"),
        seconds=msg.seconds,
    )


def progress_to_pb(progress: Progress) -> pb.WorkerMessage:
    return pb.WorkerMessage(
        progress=pb.Progress(
            command_id=progress.command_id, message=progress.message, fraction=progress.fraction
        )
    )


def metrics_to_pb(metrics: Metrics) -> pb.WorkerMessage:
    return pb.WorkerMessage(
        metrics=pb.Metrics(command_id=metrics.command_id, values=dict(metrics.values))
    )


def report_from_pb(msg: pb.WorkerMessage) -> Outcome | Progress | Metrics | None:
    """The report in a worker message (None for a Hello or an unknown kind)."""
    kind = msg.WhichOneof("kind")
    if kind == "result":
        return outcome_from_pb(msg.result)
    if kind == "progress":
        p = msg.progress
        return Progress(command_id=p.command_id, message=p.message, fraction=p.fraction)
    if kind == "metrics":
        return Metrics(command_id=msg.metrics.command_id, values=dict(msg.metrics.values))
    return None
