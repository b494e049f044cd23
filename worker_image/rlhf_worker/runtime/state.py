"""What one worker process holds across commands, and how a job is prepared.

Every rank of the job gets ``prepare`` first (it is collective: process groups
for every layout of the plan are created here, by all ranks in the same order,
as gloo requires). After it, roles are loaded, reallocated and run by the other
handlers, which all work on the ``Runtime`` kept in the worker's context.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from rlhf_operator.api.dataflow import Call, calls_for
from rlhf_operator.api.job import RLHFJob
from rlhf_operator.api.models import ModelSpec, RewardModelSpec
from rlhf_operator.contract.plan import Plan
from rlhf_operator.contract.sharding import Layout, role_head
from rlhf_worker.data.prompts import Prompt, epoch_order
from rlhf_worker.engine import Trainer
from rlhf_worker.model.config import ModelConfig
from rlhf_worker.model.decoder import Decoder
from rlhf_worker.parallel.groups import groups_for
from rlhf_worker.realloc.plan import ReallocPlan, plan_reallocation

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class RoleState:
    """One role on this rank: its home copy (and optimizer), and transient copies."""

    name: str
    config: ModelConfig  # the planned architecture and the role's shape (its head)
    home: Layout
    model: Decoder | None = None  # None if this rank is not in the home layout
    trainer: Trainer | None = None
    copies: dict[Layout, Decoder] = field(default_factory=dict)
    # The home shards while the role is offloaded to host memory (see offload.py).
    host: dict[str, torch.Tensor] | None = None
    # In-place resharding (``models.houses``): the layout whose copy the home shards are
    # kept inside, and that copy's buffers (by parameter), filled around them each time.
    housing: tuple[Layout, dict[str, torch.Tensor]] | None = None
    # Reallocation plans by (source, destination): the same ones recur every iteration,
    # and planning a 7B model between 8 ranks takes ~50 ms on every rank.
    plans: dict[tuple[Layout, Layout], ReallocPlan] = field(default_factory=dict)

    def plan(
        self, src: Layout, dst: Layout, node_of: Callable[[int], int], element_bytes: int
    ) -> ReallocPlan:
        """The reallocation plan from `src` to `dst` (made once, then remembered)."""
        key = (src, dst)
        if key not in self.plans:
            self.plans[key] = plan_reallocation(
                self.config.shape, src, dst, node_of, element_bytes=element_bytes
            )
        return self.plans[key]

    def on(self, layout: Layout) -> Decoder:
        """This rank's copy of the role under `layout` (home or transient)."""
        if layout == self.home and self.model is not None:
            if self.host is not None:
                raise RuntimeError(f"role {self.name} is offloaded: restore it before using it")
            return self.model
        copy = self.copies.get(layout)
        if copy is None:
            raise RuntimeError(f"role {self.name} has no copy under layout {layout} on this rank")
        return copy


@dataclass
class LocalData:
    """Rows of one data key this rank holds: global row segments and their tensors."""

    segments: list[tuple[int, int]]
    tensors: dict[str, torch.Tensor]

    def rows(self, start: int, stop: int) -> dict[str, torch.Tensor]:
        """The tensors' rows for global rows [start, stop) (which this rank must hold)."""
        offset = 0
        for seg_start, seg_stop in self.segments:
            if seg_start <= start and stop <= seg_stop:
                lo = offset + start - seg_start
                return {k: v[lo : lo + stop - start] for k, v in self.tensors.items()}
            offset += seg_stop - seg_start
        raise KeyError(f"rows {start}-{stop} are not held here (held: {self.segments})")


@dataclass
class Runtime:
    rank: int
    world_size: int
    device: torch.device
    job: RLHFJob
    plan: Plan
    base_dir: Path  # relative paths of the job (prompts, reward modules) resolve here
    output_dir: Path
    calls: dict[str, Call]
    layouts: dict[str, Layout]
    homes: dict[str, Layout]
    model_dirs: dict[str, Path]
    roles: dict[str, RoleState] = field(default_factory=dict)
    # An iteration's data by (key, call holding it): the producing call's rows,
    # and each consumer's own copy made by a data move. Separate entries, so a
    # move for one consumer never disturbs what another move still reads.
    data: dict[tuple[str, str], LocalData] = field(default_factory=dict)
    prompts: list[Prompt] = field(default_factory=list)
    tokenizer: Any = None
    algorithm_states: dict[str, Any] = field(default_factory=dict)  # by train call

    @property
    def spec(self) -> Any:
        return self.job.spec

    @property
    def samples_per_prompt(self) -> int:
        return int(self.spec.samples_per_prompt)

    @property
    def rows(self) -> int:
        """Samples per iteration."""
        return int(self.spec.data.batch_size) * self.samples_per_prompt

    @property
    def prompt_width(self) -> int:
        return int(self.spec.data.max_prompt_length)

    @property
    def response_width(self) -> int:
        return int(self.spec.rollout.max_new_tokens)

    def producer(self, key: str) -> str:
        """The call that produces a data key."""
        for call in self.calls.values():
            if key in call.outputs:
                return call.name
        raise KeyError(f"no call produces {key!r}")

    def input(self, key: str, call: str) -> LocalData:
        """A call's rows of an input: its own moved copy, else the producer's (same layout)."""
        held = self.data.get((key, call))
        if held is not None:
            return held
        return self.data[(key, self.producer(key))]

    def dtype(self, role: str) -> torch.dtype:
        """Parameter dtype of a role: as the job says, on CPU too (bf16 runs there, slowly,
        so that CI exercises the GPU jobs' precision; the tiny examples say float32)."""
        model = self.spec.models.present()[role]
        return DTYPES[model.dtype]

    def element_bytes(self, role: str) -> int:
        """Bytes per parameter element of a role (reallocation plans count bytes with it)."""
        return self.dtype(role).itemsize

    def node_of(self, rank: int) -> int:
        return rank // self.plan.gpus_per_node

    def iteration_prompts(self, iteration: int) -> list[Prompt]:
        """The prompts of an iteration (1-based): a pure function of the seed and the iteration.

        Epoch e is a shuffle seeded with shuffleSeed + e; iterations walk through
        the epochs in order. Resuming at any iteration sees exactly the prompts
        an uninterrupted run would have seen, with no stream state to restore.
        """
        batch, count = int(self.spec.data.batch_size), len(self.prompts)
        start = (iteration - 1) * batch
        orders: dict[int, list[int]] = {}  # one shuffle per epoch touched, not one per prompt
        out = []
        for position in range(start, start + batch):
            epoch, offset = divmod(position, count)
            if epoch not in orders:
                orders[epoch] = epoch_order(count, self.spec.data.shuffle_seed, epoch)
            out.append(self.prompts[orders[epoch][offset]])
        return out


def model_dir_for(
    output_dir: Path, base_dir: Path, role: str, model: ModelSpec | RewardModelSpec
) -> Path:
    """Where a role's model lives: its path (relative to the job), or the tiny model built for it."""
    assert model.source is not None
    if model.source.path is not None:
        path = Path(model.source.path)
        return path if path.is_absolute() else base_dir / path
    assert model.source.tiny is not None and model.architecture is not None
    arch = model.architecture.resolve().to_hf_config()
    digest = hashlib.sha256(json.dumps(arch, sort_keys=True).encode()).hexdigest()[:10]
    return output_dir / "models" / f"tiny-{role_head(role)}-seed{model.source.tiny.seed}-{digest}"


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)


def create_layout_groups(layouts: list[Layout]) -> None:
    """Create every layout's process groups, in the given order, on every rank (collective)."""
    for layout in layouts:
        groups_for(layout)


def job_calls(job: RLHFJob) -> list[Call]:
    return list(calls_for(job.spec.algorithm.name, set(job.spec.models.present())))
