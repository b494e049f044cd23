"""How a worker process is launched: its command line and its settings, as environment.

One definition shared by everything that starts or is a worker. A worker pod
holds one node's GPUs (or an aligned block of them) and runs `launcher_command`:
the launcher (`python -m rlhf_worker.launcher`) reads the pod's settings, whose
RANK is the pod's first rank and LOCAL_WORLD_SIZE its number of processes, and
starts one worker (`worker_command`, `python -m rlhf_worker`) per GPU with
`for_rank(RANK + i, local_rank=i)`. Local mode runs the same launcher for its
one node (merging `WorkerSettings.to_env` over its own environment), and the
Kubernetes pod builders put `launcher_command` and `to_env` into each worker
container. A worker reads its copy back with `WorkerSettings.from_env` and
registers with the coordinator with what it says
(`controlplane.messages.Registration.of`). Pure and torch-free.

The variables (required unless a default is given):

  RLHF_JOB_ID            the job's id; the coordinator refuses workers of another job
  RLHF_COORDINATOR_ADDR  host:port of the coordinator's control plane (gRPC)
  RLHF_TOKEN             the job's control-plane token, or instead
  RLHF_TOKEN_FILE        a file holding it (a mounted Secret); surrounding whitespace is ignored
  RANK                   this process's global rank, 0 <= RANK < WORLD_SIZE
  WORLD_SIZE             number of worker processes in the job
  MASTER_ADDR            torch.distributed rendezvous host (where rank 0 listens)
  MASTER_PORT            torch.distributed rendezvous port
  LOCAL_RANK             slot on this node: the GPU index with cuda (default 0)
  LOCAL_WORLD_SIZE       worker processes of this pod (default 1); the launcher starts
                         ranks RANK .. RANK + LOCAL_WORLD_SIZE - 1 (torchrun's name)
  NODE_RANK              index of this node (default 0)
  RLHF_DEVICE            cpu (gloo) or cuda (nccl); default cpu
  RLHF_CONNECT_TIMEOUT   seconds to keep retrying the coordinator (default 300)
  RLHF_WORKER_HANDLERS   comma-separated modules, each with a `HANDLERS` dict of
                         name -> handler added to (or overriding) the built-in table:
                         the extension hook, used by tests to add test-only commands
  RLHF_LOG_LEVEL         DEBUG, INFO (default), WARNING, ERROR or CRITICAL
  RLHF_TLS_DIR           the job's CA and the workers' certificate (`controlplane.tls`):
                         dial the coordinator over mutual TLS; unset, plaintext (tests)
  RLHF_LOG_DIR           the launcher's only: write each worker's output to
                         worker-<rank>.log there instead of the pod's log (local mode)
  RLHF_WORKER_COMMAND    the launcher's only: each worker's command line (shell words)
                         instead of `worker_command` (a profiler around it; test stand-ins)
  GLOO_SOCKET_IFNAME, NCCL_SOCKET_IFNAME (both set from one value), OMP_NUM_THREADS
                         read by torch itself (never an error here: OpenMP has forms of
                         its own, such as "4,2"); local mode sets the first two to `lo`
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from dataclasses import dataclass, field, replace

WORKER_MODULE = "rlhf_worker"
LAUNCHER_MODULE = "rlhf_worker.launcher"

JOB_ID = "RLHF_JOB_ID"
COORDINATOR_ADDR = "RLHF_COORDINATOR_ADDR"
TOKEN = "RLHF_TOKEN"
TOKEN_FILE = "RLHF_TOKEN_FILE"
RANK = "RANK"
WORLD_SIZE = "WORLD_SIZE"
LOCAL_RANK = "LOCAL_RANK"
LOCAL_WORLD_SIZE = "LOCAL_WORLD_SIZE"
NODE_RANK = "NODE_RANK"
MASTER_ADDR = "MASTER_ADDR"
MASTER_PORT = "MASTER_PORT"
DEVICE = "RLHF_DEVICE"
CONNECT_TIMEOUT = "RLHF_CONNECT_TIMEOUT"
HANDLERS = "RLHF_WORKER_HANDLERS"
LOG_LEVEL = "RLHF_LOG_LEVEL"
LOG_DIR = "RLHF_LOG_DIR"
WORKER_COMMAND = "RLHF_WORKER_COMMAND"
TLS_DIR = "RLHF_TLS_DIR"
SOCKET_IFNAMES = ("GLOO_SOCKET_IFNAME", "NCCL_SOCKET_IFNAME")
THREADS = "OMP_NUM_THREADS"

DEVICES = ("cpu", "cuda")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
DEFAULT_CONNECT_TIMEOUT_S = 300.0


class SettingsError(ValueError):
    """A missing or malformed launch setting; the message names the variable."""


@dataclass(frozen=True)
class WorkerSettings:
    """Everything one worker process is started with.

    Builders make one for the job (rank 0) and `for_rank` gives each process its
    own; the worker reads its copy back with `from_env`, so
    `WorkerSettings.from_env(s.to_env()) == s` for every valid `s` whose token is
    given by value. Where a token file is named it is what travels (`from_env` reads
    the value from it into `token`, for the worker to register with).
    """

    job_id: str
    coordinator_addr: str
    """host:port of the coordinator's control plane."""
    world_size: int
    master_addr: str
    """torch.distributed rendezvous host (rank 0's address)."""
    master_port: int
    rank: int = 0
    local_rank: int = 0
    """The slot on its node: the GPU index with cuda."""
    node_rank: int = 0
    local_world_size: int = 1
    """Worker processes of the pod (one per GPU); the launcher starts them."""
    device: str = "cpu"
    """cpu (gloo) or cuda (nccl)."""
    token: str | None = field(default=None, repr=False)  # never in logs or reprs
    """The job's token as a value (local mode; or read from `token_file` by `from_env`)..."""
    token_file: str | None = None
    """...or the path of a file holding it (a mounted Secret in Kubernetes)."""
    connect_timeout_s: float = DEFAULT_CONNECT_TIMEOUT_S
    """How long a worker keeps trying to reach the coordinator."""
    socket_ifname: str | None = None
    """Network interface for gloo/NCCL sockets; "lo" in local mode."""
    threads_per_worker: int | None = None
    """OMP_NUM_THREADS for each worker (local mode: cores / workers)."""
    handler_modules: tuple[str, ...] = ()
    """Extra handler modules for the worker (extension and test hook)."""
    log_level: str = "INFO"
    tls_dir: str | None = None
    """Directory of ca.crt, worker.crt and worker.key: mutual TLS to the coordinator."""

    def __post_init__(self) -> None:
        problem = self._problem()
        if problem is not None:
            raise SettingsError(problem)

    def _problem(self) -> str | None:
        for name, text in (
            (JOB_ID, self.job_id),
            (COORDINATOR_ADDR, self.coordinator_addr),
            (MASTER_ADDR, self.master_addr),
        ):
            if not text.strip():
                return f"{name} is not set"
        host, _, port = self.coordinator_addr.rpartition(":")
        if not host or not port.isdigit():
            return f"{COORDINATOR_ADDR}={self.coordinator_addr!r} is not host:port"
        if self.world_size < 1:
            return f"{WORLD_SIZE}={self.world_size} must be >= 1"
        if not 0 <= self.rank < self.world_size:
            return f"{RANK}={self.rank} is out of range for {WORLD_SIZE}={self.world_size}"
        for name, value in ((LOCAL_RANK, self.local_rank), (NODE_RANK, self.node_rank)):
            if value < 0:
                return f"{name}={value} must be >= 0"
        if not 1 <= self.local_world_size <= self.world_size:
            return (
                f"{LOCAL_WORLD_SIZE}={self.local_world_size} must be between 1 and "
                f"{WORLD_SIZE}={self.world_size}"
            )
        if self.local_rank >= self.local_world_size:
            return (
                f"{LOCAL_RANK}={self.local_rank} is out of range for "
                f"{LOCAL_WORLD_SIZE}={self.local_world_size}"
            )
        if not 1 <= self.master_port <= 65535:
            return f"{MASTER_PORT}={self.master_port} is not a TCP port"
        if self.device not in DEVICES:
            return f"{DEVICE}={self.device!r} must be one of {', '.join(DEVICES)}"
        if not self.connect_timeout_s > 0:
            return f"{CONNECT_TIMEOUT}={_seconds(self.connect_timeout_s)} must be > 0"
        if self.log_level not in LOG_LEVELS:
            return f"{LOG_LEVEL}={self.log_level!r} must be one of {', '.join(LOG_LEVELS)}"
        if not (self.token or "").strip() and not (self.token_file or "").strip():
            return f"{TOKEN} (or {TOKEN_FILE}) is not set"
        if self.threads_per_worker is not None and self.threads_per_worker < 1:
            return f"{THREADS}={self.threads_per_worker} must be >= 1"
        return None

    @property
    def who(self) -> str:
        return f"rank {self.rank} of job {self.job_id!r}"

    def for_rank(
        self,
        rank: int,
        local_rank: int = 0,
        node_rank: int = 0,
        local_world_size: int | None = None,
    ) -> WorkerSettings:
        """The settings of the worker with global rank `rank` (SettingsError if out of
        range); the pod's local world size stays unless given."""
        size = self.local_world_size if local_world_size is None else local_world_size
        return replace(
            self, rank=rank, local_rank=local_rank, node_rank=node_rank, local_world_size=size
        )

    def pod_ranks(self) -> range:
        """The global ranks a launcher with these settings starts (SettingsError if some
        fall outside the world)."""
        last = self.rank + self.local_world_size
        if last > self.world_size:
            raise SettingsError(
                f"{RANK}={self.rank} with {LOCAL_WORLD_SIZE}={self.local_world_size} runs past "
                f"{WORLD_SIZE}={self.world_size}"
            )
        return range(self.rank, last)

    def to_env(self) -> dict[str, str]:
        """The environment variables of this worker. A token file, when there is one, is
        passed by its path only: the Secret's value never appears in a pod spec."""
        out = {
            JOB_ID: self.job_id,
            COORDINATOR_ADDR: self.coordinator_addr,
            RANK: str(self.rank),
            WORLD_SIZE: str(self.world_size),
            LOCAL_RANK: str(self.local_rank),
            NODE_RANK: str(self.node_rank),
            LOCAL_WORLD_SIZE: str(self.local_world_size),
            MASTER_ADDR: self.master_addr,
            MASTER_PORT: str(self.master_port),
            DEVICE: self.device,
            CONNECT_TIMEOUT: _seconds(self.connect_timeout_s),
            LOG_LEVEL: self.log_level,
            # Logs reach `kubectl logs` / the local console as they are written.
            "PYTHONUNBUFFERED": "1",
        }
        if self.token_file is not None:
            out[TOKEN_FILE] = self.token_file
        elif self.token is not None:
            out[TOKEN] = self.token
        if self.socket_ifname is not None:
            out.update(dict.fromkeys(SOCKET_IFNAMES, self.socket_ifname))
        if self.threads_per_worker is not None:
            out[THREADS] = str(self.threads_per_worker)
        if self.handler_modules:
            out[HANDLERS] = ",".join(self.handler_modules)
        if self.tls_dir is not None:
            out[TLS_DIR] = self.tls_dir
        return out

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> WorkerSettings:
        """Read and check the variables; SettingsError names the first bad one. A token
        file is read here (into `token`), so a missing or empty Secret fails at start."""
        # What is missing or unreadable is named first, then what is out of range.
        coordinator_addr = _required(environ, COORDINATOR_ADDR)
        world_size, rank = _int(environ, WORLD_SIZE), _int(environ, RANK)
        master_port = _int(environ, MASTER_PORT)
        timeout = _number(environ, CONNECT_TIMEOUT, DEFAULT_CONNECT_TIMEOUT_S)
        job_id, master_addr = _required(environ, JOB_ID), _required(environ, MASTER_ADDR)
        token, token_file = _token(environ)
        threads = environ.get(THREADS, "").strip()
        return cls(
            job_id=job_id,
            coordinator_addr=coordinator_addr,
            world_size=world_size,
            master_addr=master_addr,
            master_port=master_port,
            rank=rank,
            local_rank=_int(environ, LOCAL_RANK, default=0),
            node_rank=_int(environ, NODE_RANK, default=0),
            local_world_size=_int(environ, LOCAL_WORLD_SIZE, default=1),
            device=environ.get(DEVICE, "").strip() or "cpu",
            token=token,
            token_file=token_file,
            connect_timeout_s=timeout,
            socket_ifname=environ.get(SOCKET_IFNAMES[0], "").strip() or None,
            threads_per_worker=int(threads) if threads.isdigit() and int(threads) > 0 else None,
            handler_modules=tuple(
                p.strip() for p in environ.get(HANDLERS, "").split(",") if p.strip()
            ),
            log_level=(environ.get(LOG_LEVEL, "").strip() or "INFO").upper(),
            tls_dir=environ.get(TLS_DIR, "").strip() or None,
        )


def _seconds(value: float) -> str:
    """Seconds as the shortest text that reads back as the same number ("300", "12.5")."""
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def worker_command(python: str = sys.executable) -> list[str]:
    """One worker process's command line (what the launcher starts per GPU)."""
    return [python, "-m", WORKER_MODULE]


def launcher_command(python: str = sys.executable) -> list[str]:
    """A worker pod's command line (a pod uses its image's `python`): the launcher of
    its LOCAL_WORLD_SIZE workers."""
    return [python, "-m", LAUNCHER_MODULE]


def _required(environ: Mapping[str, str], name: str) -> str:
    value = environ.get(name, "").strip()
    if not value:
        raise SettingsError(f"{name} is not set")
    return value


def _int(environ: Mapping[str, str], name: str, default: int | None = None) -> int:
    raw = environ.get(name, "").strip()
    if not raw:
        if default is None:
            raise SettingsError(f"{name} is not set")
        return default
    try:
        return int(raw)
    except ValueError:
        raise SettingsError(f"{name}={raw!r} is not an integer") from None


def _number(environ: Mapping[str, str], name: str, default: float) -> float:
    raw = environ.get(name, "").strip()
    if not raw:
        return default
    try:
        return float(raw)
    except ValueError:
        raise SettingsError(f"{name}={raw!r} is not a number of seconds") from None


def _token(environ: Mapping[str, str]) -> tuple[str | None, str | None]:
    """(the token, the file it came from or None)."""
    value, path = environ.get(TOKEN, ""), environ.get(TOKEN_FILE, "")
    if value and path:
        raise SettingsError(f"set only one of {TOKEN} and {TOKEN_FILE}")
    if path:
        try:
            with open(path, encoding="utf-8") as f:
                value = f.read()
        except (OSError, UnicodeDecodeError) as err:
            raise SettingsError(f"{TOKEN_FILE}={path}: cannot read it: {err}") from None
        if not value.strip():
            raise SettingsError(f"{TOKEN_FILE}={path} is empty")
        return value.strip(), path
    if not value.strip():
        raise SettingsError(f"{TOKEN} (or {TOKEN_FILE}) is not set")
    return value.strip(), None
