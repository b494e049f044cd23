"""`python -m rlhf_worker`: the worker process. Everything comes from the environment.

This is the launch contract that local mode (`rlhfctl run`) and the Kubernetes
worker pods share; `rlhf_operator.coordinator.launch.worker_env` writes these
variables and `worker_command` gives the command line.

Required:
  RLHF_JOB_ID            the job's id; the coordinator refuses workers of another job
  RLHF_COORDINATOR_ADDR  host:port of the coordinator's control plane (gRPC)
  RLHF_TOKEN             the job's control-plane token, or instead
  RLHF_TOKEN_FILE        a file holding it (a mounted Secret); surrounding whitespace is ignored
  RANK                   this process's global rank, 0 <= RANK < WORLD_SIZE
  WORLD_SIZE             number of worker processes in the job
  MASTER_ADDR            torch.distributed rendezvous host (where rank 0 listens)
  MASTER_PORT            torch.distributed rendezvous port

Optional:
  LOCAL_RANK             slot on this node: the GPU index with cuda (default 0)
  NODE_RANK              index of this node (default 0)
  RLHF_DEVICE            cpu (gloo) or cuda (nccl); default cpu
  RLHF_CONNECT_TIMEOUT   seconds to keep retrying the coordinator (default 300)
  RLHF_WORKER_HANDLERS   comma-separated modules, each with a `HANDLERS` dict of
                         name -> handler added to (or overriding) the built-in table:
                         the extension hook, used by tests to add test-only commands
  RLHF_LOG_LEVEL         DEBUG, INFO (default), WARNING or ERROR
  GLOO_SOCKET_IFNAME, NCCL_SOCKET_IFNAME, OMP_NUM_THREADS
                         read by torch itself; local mode sets the first two to `lo`

Exit status: 0 after the coordinator's Shutdown; 2 bad environment; 3 refused by
the coordinator (wrong token, job or rank); 4 coordinator unreachable before the
connect timeout; 5 coordinator lost mid-job. The reason is the last line on stderr,
and in the file `RLHF_TERMINATION_LOG` names, if set (`exits.ending`).
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass

from rlhf_operator.controlplane import environment as env
from rlhf_operator.controlplane import exits

from .agent import EXIT_CONFIG, AgentConfig, AgentExit, Handler, builtin_handlers, run_agent

_LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


class ConfigError(ValueError):
    """A missing or malformed environment variable (the message names it)."""


@dataclass(frozen=True)
class WorkerSettings:
    agent: AgentConfig
    handler_modules: tuple[str, ...] = ()
    log_level: str = "INFO"


def _required(environ: Mapping[str, str], name: str) -> str:
    value = environ.get(name, "").strip()
    if not value:
        raise ConfigError(f"{name} is not set")
    return value


def _int(
    environ: Mapping[str, str], name: str, default: int | None = None, minimum: int = 0
) -> int:
    raw = environ.get(name, "").strip()
    if not raw:
        if default is None:
            raise ConfigError(f"{name} is not set")
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not an integer") from None
    if value < minimum:
        raise ConfigError(f"{name}={value} must be >= {minimum}")
    return value


def _token(environ: Mapping[str, str]) -> str:
    value, path = environ.get(env.TOKEN, ""), environ.get(env.TOKEN_FILE, "")
    if value and path:
        raise ConfigError(f"set only one of {env.TOKEN} and {env.TOKEN_FILE}")
    if path:
        try:
            with open(path, encoding="utf-8") as f:
                value = f.read()
        except (OSError, UnicodeDecodeError) as err:
            raise ConfigError(f"{env.TOKEN_FILE}={path}: cannot read it: {err}") from None
        if not value.strip():
            raise ConfigError(f"{env.TOKEN_FILE}={path} is empty")
        return value.strip()
    if not value.strip():
        raise ConfigError(f"{env.TOKEN} (or {env.TOKEN_FILE}) is not set")
    return value.strip()


def settings_from_env(environ: Mapping[str, str]) -> WorkerSettings:
    """Read and check the contract's variables; ConfigError names the first bad one."""
    addr = _required(environ, env.COORDINATOR_ADDR)
    host, _, port = addr.rpartition(":")
    if not host or not port.isdigit():
        raise ConfigError(f"{env.COORDINATOR_ADDR}={addr!r} is not host:port")
    world_size = _int(environ, env.WORLD_SIZE, minimum=1)
    rank = _int(environ, env.RANK)
    if rank >= world_size:
        raise ConfigError(f"{env.RANK}={rank} is out of range for {env.WORLD_SIZE}={world_size}")
    master_port = _int(environ, env.MASTER_PORT, minimum=1)
    if master_port > 65535:
        raise ConfigError(f"{env.MASTER_PORT}={master_port} is not a TCP port")
    device = environ.get(env.DEVICE, "cpu").strip() or "cpu"
    if device not in env.DEVICES:
        raise ConfigError(f"{env.DEVICE}={device!r} must be one of {', '.join(env.DEVICES)}")
    raw_timeout = environ.get(env.CONNECT_TIMEOUT, "").strip() or "300"
    try:
        connect_timeout = float(raw_timeout)
    except ValueError:
        raise ConfigError(
            f"{env.CONNECT_TIMEOUT}={raw_timeout!r} is not a number of seconds"
        ) from None
    if not connect_timeout > 0:
        raise ConfigError(f"{env.CONNECT_TIMEOUT}={raw_timeout} must be > 0")
    log_level = (environ.get(env.LOG_LEVEL, "").strip() or "INFO").upper()
    if log_level not in _LOG_LEVELS:
        raise ConfigError(f"{env.LOG_LEVEL}={log_level!r} must be one of {', '.join(_LOG_LEVELS)}")
    modules = tuple(p.strip() for p in environ.get(env.HANDLERS, "").split(",") if p.strip())
    agent = AgentConfig(
        job_id=_required(environ, env.JOB_ID),
        coordinator_addr=addr,
        token=_token(environ),
        rank=rank,
        world_size=world_size,
        local_rank=_int(environ, env.LOCAL_RANK, default=0),
        node_rank=_int(environ, env.NODE_RANK, default=0),
        master_addr=_required(environ, env.MASTER_ADDR),
        master_port=master_port,
        device=device,
        connect_timeout_s=connect_timeout,
    )
    return WorkerSettings(agent, modules, log_level)


# The main job's commands (prepare, load_role, run_call, ...): in every worker.
MAIN_JOB_HANDLERS = "rlhf_worker.runtime.handlers"


def load_handlers(modules: tuple[str, ...]) -> dict[str, Handler]:
    """The built-in handlers plus each module's `HANDLERS` (later ones win)."""
    handlers = builtin_handlers()
    for name in modules:
        try:
            module = importlib.import_module(name)
        except Exception as err:
            raise ConfigError(f"{env.HANDLERS}: cannot import {name!r}: {err}") from None
        table = getattr(module, "HANDLERS", None)
        if not isinstance(table, Mapping) or not all(callable(h) for h in table.values()):
            raise ConfigError(f"{env.HANDLERS}: {name!r} has no HANDLERS dict of name -> callable")
        handlers.update(table)
    return handlers


def main(environ: Mapping[str, str] | None = None) -> int:
    environ = os.environ if environ is None else environ
    try:
        settings = settings_from_env(environ)
        handlers = load_handlers((MAIN_JOB_HANDLERS, *settings.handler_modules))
    except ConfigError as err:
        return exits.ending(EXIT_CONFIG, f"rlhf-worker: {err}", environ)
    cfg = settings.agent
    logging.basicConfig(
        level=settings.log_level,
        format=f"%(asctime)s rank {cfg.rank} %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        return run_agent(cfg, handlers)
    except AgentExit as stop:
        return exits.ending(stop.code, f"rlhf-worker: {stop.message}", environ)
    except KeyboardInterrupt:
        print(f"rlhf-worker: {cfg.who}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    code = main()
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    # os._exit, not sys.exit: a handler thread stuck in a collective (the reason we
    # are leaving) must not keep the process alive, and nothing is left to clean up.
    os._exit(code)
