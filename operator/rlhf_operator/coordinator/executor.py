"""Running a job's plan on registered workers, iteration by iteration.

`JobRunner` turns each schedule step (see `schedule`) into a control-plane
command to the step's ranks. Steps are dispatched one at a time, in a single
global order, each as soon as its prerequisites are done; every worker runs
its commands in arrival order. So all ranks meet their collectives in the same
order, while steps on disjoint meshes run at the same time.

Per iteration it records each call's measured seconds next to the plan's
estimate, the headline metrics (reward, KL, tokens/s), and writes checkpoints
(every rank writes its files; the coordinator writes the commit marker once all
are on disk) and, at the end, the exported actor.
"""

from __future__ import annotations

import concurrent.futures as cf
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rlhf_operator.api.dataflow import Call, calls_for
from rlhf_operator.api.job import RLHFJob
from rlhf_operator.contract import checkpoints as ckpt
from rlhf_operator.contract.plan import Plan, home_layouts
from rlhf_operator.controlplane import messages as m
from rlhf_operator.coordinator.outputs import CallTiming, IterationRecord, OutputDir
from rlhf_operator.coordinator.schedule import (
    EndIteration,
    MoveData,
    Offload,
    Realloc,
    Release,
    Restore,
    RunCall,
    Step,
    iteration_steps,
)
from rlhf_operator.coordinator.server import Coordinator
from rlhf_operator.coordinator.state import CommandResult


@dataclass
class StepOutcome:
    seconds: float  # the slowest rank's handler time
    outputs: dict[int, dict[str, Any]]


@dataclass
class JobRunner:
    coordinator: Coordinator
    job: RLHFJob
    plan: Plan
    output: OutputDir
    base_dir: Path
    on_iteration: Callable[[IterationRecord], None] | None = None
    command_timeout_s: float | None = None
    calls: list[Call] = field(init=False)
    steps: list[Step] = field(init=False)

    def __post_init__(self) -> None:
        self.calls = list(
            calls_for(self.job.spec.algorithm.name, set(self.job.spec.models.present()))
        )
        self.steps = iteration_steps(self.plan, self.calls)

    @property
    def world(self) -> list[int]:
        return list(range(self.coordinator.config.world_size))

    # --- setup -----------------------------------------------------------------

    def setup(self, ready_timeout_s: float = 600.0) -> int:
        """Bring every worker to the start of the next iteration; returns its number."""
        self.coordinator.wait_for_workers(ready_timeout_s)
        self.coordinator.call(self.world, m.InitProcessGroup(timeout_s=600.0))
        prepare = m.Prepare(self.job, self.plan, str(self.base_dir), str(self.output.root))
        self.coordinator.call(self.world, prepare)
        models = self.job.spec.models.present()
        for role, layout in home_layouts(self.plan, self.calls).items():
            if models[role].source is None:
                continue  # a reward function: nothing to load
            self.coordinator.call(self.world, m.LoadRole(role, layout, ""))
        latest = ckpt.latest_complete(self.output.checkpoints)
        if latest is None:
            return 1
        self.coordinator.call(
            self.world, m.RestoreCheckpoint(str(self.output.checkpoints), latest.iteration)
        )
        self.output.truncate_metrics(latest.iteration)
        return latest.iteration + 1

    # --- one iteration ---------------------------------------------------------------

    def run_iteration(self, iteration: int) -> IterationRecord:
        started = time.monotonic()
        outcomes = self._dispatch(iteration)
        seconds = time.monotonic() - started
        timings: dict[str, CallTiming] = {}
        extra: dict[str, float] = {}
        tokens = samples = 0.0
        for step in self.steps:
            action, outcome = step.action, outcomes[step.index]
            if isinstance(action, RunCall):
                planned = self.plan.call(action.call)
                peaks = [
                    int(o["peak_bytes"]) for o in outcome.outputs.values() if "peak_bytes" in o
                ]
                timings[action.call] = CallTiming(
                    round(outcome.seconds, 6),
                    planned.seconds,
                    max(peaks) if peaks else None,
                    planned.memory_bytes,
                )
                tokens += sum(o.get("tokens", 0.0) for o in outcome.outputs.values())
                samples += sum(o.get("samples", 0.0) for o in outcome.outputs.values())
                first = outcome.outputs[min(outcome.outputs)] if outcome.outputs else {}
                for key, value in first.items():
                    if key not in ("tokens", "samples", "peak_bytes"):
                        extra[f"{action.call}/{key}"] = float(value)
            elif isinstance(action, Realloc):
                extra["reallocation_seconds"] = (
                    extra.get("reallocation_seconds", 0.0) + outcome.seconds
                )
                for key, field in (("bytes", "bytes_received"), ("local_bytes", "bytes_copied")):
                    extra[f"reallocation_{key}"] = extra.get(f"reallocation_{key}", 0.0) + sum(
                        o.get(field, 0.0) for o in outcome.outputs.values()
                    )
            elif isinstance(action, Restore | Offload):
                extra["offload_seconds"] = extra.get("offload_seconds", 0.0) + outcome.seconds
        train = next(c.name for c in self.calls if c.kind == "train" and c.role == "actor")
        record = IterationRecord(
            iteration=iteration,
            reward_mean=extra.get(f"{train}/reward_mean", float("nan")),
            kl=extra.get(f"{train}/kl", 0.0),
            seconds=round(seconds, 6),
            tokens_per_second=tokens / seconds if seconds > 0 else 0.0,
            samples_per_second=samples / seconds if seconds > 0 else 0.0,
            calls=timings,
            extra=extra,
        )
        return record

    def _dispatch(self, iteration: int) -> dict[int, StepOutcome]:
        """Send every step once its prerequisites are done; wait for all; raise the first failure."""
        pending: dict[int, dict[int, cf.Future[CommandResult]]] = {}
        done: dict[int, StepOutcome] = {}
        waiting = list(self.steps)
        while waiting or pending:
            for step in list(waiting):
                if all(a in done for a in step.after):
                    pending[step.index] = self.coordinator.send(
                        step.ranks, self._command(step, iteration), None, self.command_timeout_s
                    )
                    waiting.remove(step)
            # Only the futures still running: a finished one (one rank of a step whose
            # other ranks are still busy) would make wait() return at once, and the
            # loop would spin, starving the gRPC threads of this process of the GIL.
            running = [
                f for per_rank in pending.values() for f in per_rank.values() if not f.done()
            ]
            if running:
                cf.wait(running, return_when=cf.FIRST_COMPLETED)
            for index, per_rank in list(pending.items()):
                for future in per_rank.values():
                    error = future.exception() if future.done() else None
                    if error is not None:
                        raise error
                if all(f.done() for f in per_rank.values()):
                    results = {rank: f.result() for rank, f in per_rank.items()}
                    done[index] = StepOutcome(
                        max((r.seconds for r in results.values()), default=0.0),
                        {rank: r.output for rank, r in results.items()},
                    )
                    del pending[index]
        return done

    def _command(self, step: Step, iteration: int) -> m.Command:
        """The one command a schedule step is."""
        a = step.action
        if isinstance(a, Realloc):
            return m.Reallocate(a.role, a.src, a.dst)
        if isinstance(a, MoveData):
            return m.MoveData(a.key, a.src_call, a.dst_call)
        if isinstance(a, RunCall):
            call = next(c for c in self.calls if c.name == a.call)
            return m.RunCall(a.call, iteration, tuple(call.inputs), tuple(call.outputs))
        if isinstance(a, Release):
            return m.Release(a.role, a.layout)
        if isinstance(a, Restore):
            return m.RestoreRole(a.role)
        if isinstance(a, Offload):
            return m.OffloadRole(a.role)
        assert isinstance(a, EndIteration)
        return m.EndIteration(iteration)

    # --- the whole run ----------------------------------------------------------------------

    def run_to_end(
        self,
        start: int,
        on_record: Callable[[IterationRecord, Path | None], None],
        should_stop: Callable[[], bool] = lambda: False,
        export_path: Path | None = None,
    ) -> bool:
        """Iterations `start`..last, with checkpoints every `interval` and at the end, then the
        export. `on_record(record, checkpoint)` follows each iteration. Returns False if it
        stopped early (`should_stop`), after checkpointing the last completed iteration."""
        total = int(self.job.spec.training.iterations)
        interval = int(self.job.spec.checkpoint.interval)
        for iteration in range(start, total + 1):
            record = self.run_iteration(iteration)
            self.output.append_metrics(record)
            stop = should_stop()
            saved = None
            if iteration % interval == 0 or iteration == total or stop:
                saved = self.checkpoint(iteration)
            on_record(record, saved)
            if stop and iteration < total:
                return False
        export = export_path or self.output.export
        if start <= total or not export.exists():
            self.export(export)
        return True

    # --- checkpoints and export ------------------------------------------------------------

    def checkpoint(self, iteration: int) -> Path:
        """Every rank writes its files; the marker goes last, once all of them are on disk."""
        root = self.output.checkpoints
        results = self.coordinator.call(self.world, m.SaveCheckpoint(str(root), iteration))
        manifest: dict[str, Any] = {}
        for result in results.values():
            manifest.update(result.output["files"])
        path = ckpt.commit(root, iteration, manifest, len(self.world))
        ckpt.retain(root, int(self.job.spec.checkpoint.keep))
        return path

    def export(self, path: Path) -> None:
        self.coordinator.call(self.world, m.Export(str(path), "actor"))

    def shutdown(self, reason: str = "job finished") -> None:
        self.coordinator.shutdown(reason=reason)
