from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class RegisterRequest(_message.Message):
    __slots__ = ("job_id", "rank", "world_size", "local_rank", "node_rank", "host", "pid", "device", "token")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    RANK_FIELD_NUMBER: _ClassVar[int]
    WORLD_SIZE_FIELD_NUMBER: _ClassVar[int]
    LOCAL_RANK_FIELD_NUMBER: _ClassVar[int]
    NODE_RANK_FIELD_NUMBER: _ClassVar[int]
    HOST_FIELD_NUMBER: _ClassVar[int]
    PID_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    rank: int
    world_size: int
    local_rank: int
    node_rank: int
    host: str
    pid: int
    device: str
    token: str
    def __init__(self, job_id: _Optional[str] = ..., rank: _Optional[int] = ..., world_size: _Optional[int] = ..., local_rank: _Optional[int] = ..., node_rank: _Optional[int] = ..., host: _Optional[str] = ..., pid: _Optional[int] = ..., device: _Optional[str] = ..., token: _Optional[str] = ...) -> None: ...

class RegisterReply(_message.Message):
    __slots__ = ("session_id", "heartbeat_interval_seconds", "heartbeat_timeout_seconds")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_INTERVAL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_TIMEOUT_SECONDS_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    heartbeat_interval_seconds: float
    heartbeat_timeout_seconds: float
    def __init__(self, session_id: _Optional[str] = ..., heartbeat_interval_seconds: _Optional[float] = ..., heartbeat_timeout_seconds: _Optional[float] = ...) -> None: ...

class HeartbeatRequest(_message.Message):
    __slots__ = ("job_id", "rank", "session_id")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    RANK_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    rank: int
    session_id: str
    def __init__(self, job_id: _Optional[str] = ..., rank: _Optional[int] = ..., session_id: _Optional[str] = ...) -> None: ...

class HeartbeatReply(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class Layout(_message.Message):
    __slots__ = ("ranks", "pp", "dp", "tp")
    RANKS_FIELD_NUMBER: _ClassVar[int]
    PP_FIELD_NUMBER: _ClassVar[int]
    DP_FIELD_NUMBER: _ClassVar[int]
    TP_FIELD_NUMBER: _ClassVar[int]
    ranks: _containers.RepeatedScalarFieldContainer[int]
    pp: int
    dp: int
    tp: int
    def __init__(self, ranks: _Optional[_Iterable[int]] = ..., pp: _Optional[int] = ..., dp: _Optional[int] = ..., tp: _Optional[int] = ...) -> None: ...

class InitProcessGroup(_message.Message):
    __slots__ = ("timeout_seconds",)
    TIMEOUT_SECONDS_FIELD_NUMBER: _ClassVar[int]
    timeout_seconds: float
    def __init__(self, timeout_seconds: _Optional[float] = ...) -> None: ...

class Prepare(_message.Message):
    __slots__ = ("job", "plan", "base_dir", "output_dir")
    JOB_FIELD_NUMBER: _ClassVar[int]
    PLAN_FIELD_NUMBER: _ClassVar[int]
    BASE_DIR_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_DIR_FIELD_NUMBER: _ClassVar[int]
    job: bytes
    plan: bytes
    base_dir: str
    output_dir: str
    def __init__(self, job: _Optional[bytes] = ..., plan: _Optional[bytes] = ..., base_dir: _Optional[str] = ..., output_dir: _Optional[str] = ...) -> None: ...

class LoadRole(_message.Message):
    __slots__ = ("role", "layout", "model_source")
    ROLE_FIELD_NUMBER: _ClassVar[int]
    LAYOUT_FIELD_NUMBER: _ClassVar[int]
    MODEL_SOURCE_FIELD_NUMBER: _ClassVar[int]
    role: str
    layout: Layout
    model_source: str
    def __init__(self, role: _Optional[str] = ..., layout: _Optional[_Union[Layout, _Mapping]] = ..., model_source: _Optional[str] = ...) -> None: ...

class RunCall(_message.Message):
    __slots__ = ("name", "iteration", "inputs", "outputs")
    NAME_FIELD_NUMBER: _ClassVar[int]
    ITERATION_FIELD_NUMBER: _ClassVar[int]
    INPUTS_FIELD_NUMBER: _ClassVar[int]
    OUTPUTS_FIELD_NUMBER: _ClassVar[int]
    name: str
    iteration: int
    inputs: _containers.RepeatedScalarFieldContainer[str]
    outputs: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, name: _Optional[str] = ..., iteration: _Optional[int] = ..., inputs: _Optional[_Iterable[str]] = ..., outputs: _Optional[_Iterable[str]] = ...) -> None: ...

class Reallocate(_message.Message):
    __slots__ = ("role", "from_layout", "to_layout")
    ROLE_FIELD_NUMBER: _ClassVar[int]
    FROM_LAYOUT_FIELD_NUMBER: _ClassVar[int]
    TO_LAYOUT_FIELD_NUMBER: _ClassVar[int]
    role: str
    from_layout: Layout
    to_layout: Layout
    def __init__(self, role: _Optional[str] = ..., from_layout: _Optional[_Union[Layout, _Mapping]] = ..., to_layout: _Optional[_Union[Layout, _Mapping]] = ...) -> None: ...

class MoveData(_message.Message):
    __slots__ = ("key", "src_call", "dst_call")
    KEY_FIELD_NUMBER: _ClassVar[int]
    SRC_CALL_FIELD_NUMBER: _ClassVar[int]
    DST_CALL_FIELD_NUMBER: _ClassVar[int]
    key: str
    src_call: str
    dst_call: str
    def __init__(self, key: _Optional[str] = ..., src_call: _Optional[str] = ..., dst_call: _Optional[str] = ...) -> None: ...

class Release(_message.Message):
    __slots__ = ("role", "layout")
    ROLE_FIELD_NUMBER: _ClassVar[int]
    LAYOUT_FIELD_NUMBER: _ClassVar[int]
    role: str
    layout: Layout
    def __init__(self, role: _Optional[str] = ..., layout: _Optional[_Union[Layout, _Mapping]] = ...) -> None: ...

class OffloadRole(_message.Message):
    __slots__ = ("role",)
    ROLE_FIELD_NUMBER: _ClassVar[int]
    role: str
    def __init__(self, role: _Optional[str] = ...) -> None: ...

class RestoreRole(_message.Message):
    __slots__ = ("role",)
    ROLE_FIELD_NUMBER: _ClassVar[int]
    role: str
    def __init__(self, role: _Optional[str] = ...) -> None: ...

class EndIteration(_message.Message):
    __slots__ = ("iteration",)
    ITERATION_FIELD_NUMBER: _ClassVar[int]
    iteration: int
    def __init__(self, iteration: _Optional[int] = ...) -> None: ...

class SaveCheckpoint(_message.Message):
    __slots__ = ("path", "iteration")
    PATH_FIELD_NUMBER: _ClassVar[int]
    ITERATION_FIELD_NUMBER: _ClassVar[int]
    path: str
    iteration: int
    def __init__(self, path: _Optional[str] = ..., iteration: _Optional[int] = ...) -> None: ...

class RestoreCheckpoint(_message.Message):
    __slots__ = ("path", "iteration")
    PATH_FIELD_NUMBER: _ClassVar[int]
    ITERATION_FIELD_NUMBER: _ClassVar[int]
    path: str
    iteration: int
    def __init__(self, path: _Optional[str] = ..., iteration: _Optional[int] = ...) -> None: ...

class Export(_message.Message):
    __slots__ = ("path", "role")
    PATH_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    path: str
    role: str
    def __init__(self, path: _Optional[str] = ..., role: _Optional[str] = ...) -> None: ...

class Shutdown(_message.Message):
    __slots__ = ("reason",)
    REASON_FIELD_NUMBER: _ClassVar[int]
    reason: str
    def __init__(self, reason: _Optional[str] = ...) -> None: ...

class Custom(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class Command(_message.Message):
    __slots__ = ("command_id", "deadline_seconds", "args", "init_process_group", "load_role", "run_call", "reallocate", "save_checkpoint", "restore_checkpoint", "export", "shutdown", "custom", "prepare", "move_data", "release", "offload_role", "restore_role", "end_iteration")
    COMMAND_ID_FIELD_NUMBER: _ClassVar[int]
    DEADLINE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    ARGS_FIELD_NUMBER: _ClassVar[int]
    INIT_PROCESS_GROUP_FIELD_NUMBER: _ClassVar[int]
    LOAD_ROLE_FIELD_NUMBER: _ClassVar[int]
    RUN_CALL_FIELD_NUMBER: _ClassVar[int]
    REALLOCATE_FIELD_NUMBER: _ClassVar[int]
    SAVE_CHECKPOINT_FIELD_NUMBER: _ClassVar[int]
    RESTORE_CHECKPOINT_FIELD_NUMBER: _ClassVar[int]
    EXPORT_FIELD_NUMBER: _ClassVar[int]
    SHUTDOWN_FIELD_NUMBER: _ClassVar[int]
    CUSTOM_FIELD_NUMBER: _ClassVar[int]
    PREPARE_FIELD_NUMBER: _ClassVar[int]
    MOVE_DATA_FIELD_NUMBER: _ClassVar[int]
    RELEASE_FIELD_NUMBER: _ClassVar[int]
    OFFLOAD_ROLE_FIELD_NUMBER: _ClassVar[int]
    RESTORE_ROLE_FIELD_NUMBER: _ClassVar[int]
    END_ITERATION_FIELD_NUMBER: _ClassVar[int]
    command_id: int
    deadline_seconds: float
    args: bytes
    init_process_group: InitProcessGroup
    load_role: LoadRole
    run_call: RunCall
    reallocate: Reallocate
    save_checkpoint: SaveCheckpoint
    restore_checkpoint: RestoreCheckpoint
    export: Export
    shutdown: Shutdown
    custom: Custom
    prepare: Prepare
    move_data: MoveData
    release: Release
    offload_role: OffloadRole
    restore_role: RestoreRole
    end_iteration: EndIteration
    def __init__(self, command_id: _Optional[int] = ..., deadline_seconds: _Optional[float] = ..., args: _Optional[bytes] = ..., init_process_group: _Optional[_Union[InitProcessGroup, _Mapping]] = ..., load_role: _Optional[_Union[LoadRole, _Mapping]] = ..., run_call: _Optional[_Union[RunCall, _Mapping]] = ..., reallocate: _Optional[_Union[Reallocate, _Mapping]] = ..., save_checkpoint: _Optional[_Union[SaveCheckpoint, _Mapping]] = ..., restore_checkpoint: _Optional[_Union[RestoreCheckpoint, _Mapping]] = ..., export: _Optional[_Union[Export, _Mapping]] = ..., shutdown: _Optional[_Union[Shutdown, _Mapping]] = ..., custom: _Optional[_Union[Custom, _Mapping]] = ..., prepare: _Optional[_Union[Prepare, _Mapping]] = ..., move_data: _Optional[_Union[MoveData, _Mapping]] = ..., release: _Optional[_Union[Release, _Mapping]] = ..., offload_role: _Optional[_Union[OffloadRole, _Mapping]] = ..., restore_role: _Optional[_Union[RestoreRole, _Mapping]] = ..., end_iteration: _Optional[_Union[EndIteration, _Mapping]] = ...) -> None: ...

class Hello(_message.Message):
    __slots__ = ("job_id", "rank", "session_id")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    RANK_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    rank: int
    session_id: str
    def __init__(self, job_id: _Optional[str] = ..., rank: _Optional[int] = ..., session_id: _Optional[str] = ...) -> None: ...

class Result(_message.Message):
    __slots__ = ("command_id", "ok", "error", "output", "seconds")
    COMMAND_ID_FIELD_NUMBER: _ClassVar[int]
    OK_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_FIELD_NUMBER: _ClassVar[int]
    SECONDS_FIELD_NUMBER: _ClassVar[int]
    command_id: int
    ok: bool
    error: str
    output: bytes
    seconds: float
    def __init__(self, command_id: _Optional[int] = ..., ok: _Optional[bool] = ..., error: _Optional[str] = ..., output: _Optional[bytes] = ..., seconds: _Optional[float] = ...) -> None: ...

class Progress(_message.Message):
    __slots__ = ("command_id", "message", "fraction")
    COMMAND_ID_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    FRACTION_FIELD_NUMBER: _ClassVar[int]
    command_id: int
    message: str
    fraction: float
    def __init__(self, command_id: _Optional[int] = ..., message: _Optional[str] = ..., fraction: _Optional[float] = ...) -> None: ...

class Metrics(_message.Message):
    __slots__ = ("command_id", "values")
    class ValuesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    COMMAND_ID_FIELD_NUMBER: _ClassVar[int]
    VALUES_FIELD_NUMBER: _ClassVar[int]
    command_id: int
    values: _containers.ScalarMap[str, float]
    def __init__(self, command_id: _Optional[int] = ..., values: _Optional[_Mapping[str, float]] = ...) -> None: ...

class WorkerMessage(_message.Message):
    __slots__ = ("hello", "result", "progress", "metrics")
    HELLO_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    hello: Hello
    result: Result
    progress: Progress
    metrics: Metrics
    def __init__(self, hello: _Optional[_Union[Hello, _Mapping]] = ..., result: _Optional[_Union[Result, _Mapping]] = ..., progress: _Optional[_Union[Progress, _Mapping]] = ..., metrics: _Optional[_Union[Metrics, _Mapping]] = ...) -> None: ...
