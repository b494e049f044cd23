"""`python -m rlhf_worker`: the worker process. Everything comes from the environment.

This is the launch contract that local mode (`rlhfctl run`) and the Kubernetes
worker pods share: `rlhf_operator.contract.launch.WorkerSettings` writes the
variables (`to_env`, where each is documented) and reads them back here
(`from_env`); `worker_command` gives the command line.

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

from rlhf_operator.contract import launch
from rlhf_operator.contract.launch import SettingsError, WorkerSettings
from rlhf_operator.controlplane import exits

from .agent import EXIT_CONFIG, AgentExit, Handler, builtin_handlers, run_agent


class ConfigError(ValueError):
    """A handler module that cannot be used (the message names it)."""


# The main job's commands (prepare, load_role, run_call, ...): in every worker.
MAIN_JOB_HANDLERS = "rlhf_worker.runtime.handlers"


def load_handlers(modules: tuple[str, ...]) -> dict[str, Handler]:
    """The built-in handlers plus each module's `HANDLERS` (later ones win)."""
    handlers = builtin_handlers()
    for name in modules:
        try:
            module = importlib.import_module(name)
        except Exception as err:
            raise ConfigError(f"{launch.HANDLERS}: cannot import {name!r}: {err}") from None
        table = getattr(module, "HANDLERS", None)
        if not isinstance(table, Mapping) or not all(callable(h) for h in table.values()):
            raise ConfigError(
                f"{launch.HANDLERS}: {name!r} has no HANDLERS dict of name -> callable"
            )
        handlers.update(table)
    return handlers


def main(environ: Mapping[str, str] | None = None) -> int:
    environ = os.environ if environ is None else environ
    try:
        cfg = WorkerSettings.from_env(environ)
        handlers = load_handlers((MAIN_JOB_HANDLERS, *cfg.handler_modules))
    except (SettingsError, ConfigError) as err:
        return exits.ending(EXIT_CONFIG, f"rlhf-worker: {err}", environ)
    logging.basicConfig(
        level=cfg.log_level,
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
