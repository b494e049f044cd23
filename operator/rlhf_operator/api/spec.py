"""The RLHFJob spec, apart from models and algorithm (see models.py, algorithm.py)."""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import ConfigDict, Field

from .algorithm import Algorithm
from .base import ApiModel, cel_rules
from .models import Models

PositiveInt = Annotated[int, Field(ge=1)]
LearningRate = Annotated[float, Field(gt=0, le=1)]
# Free-form Kubernetes objects (affinity, pod template overrides): kept as they
# are and checked by the API server when the pods are created.
FreeForm = Annotated[
    dict[str, Any], Field(json_schema_extra={"x-kubernetes-preserve-unknown-fields": True})
]


class Rollout(ApiModel):
    """How the actor generates responses."""

    backend: Literal["torch", "vllm"] = "torch"
    """torch: the built-in batched generator; vllm: a vLLM engine inside the generation workers."""
    max_new_tokens: Annotated[int, Field(ge=1, le=131072)] = 128
    """Longest response, in tokens."""
    temperature: Annotated[float, Field(ge=0, le=10)] = 1.0
    """Sampling temperature; 0 means greedy."""
    top_p: Annotated[float, Field(gt=0, le=1)] = 1.0
    """Nucleus sampling mass."""
    samples_per_prompt: Annotated[int | None, Field(ge=1, le=1024)] = None
    """Responses per prompt; defaults to the algorithm's group size (GRPO, RLOO), else 1."""
    recompute_logprobs: bool = True
    """With vllm: recompute the old log-probabilities with the training engine (the mismatch with vLLM's is reported); false uses vLLM's own."""


class PromptSource(ApiModel):
    """A file of prompts: JSON Lines or Parquet, one prompt per record."""

    path: Annotated[str, Field(min_length=1, max_length=4096)]
    """Path of the file (relative paths are resolved against the job file in local mode)."""
    format: Literal["jsonl", "parquet"] | None = None
    """File format; defaults from the file name (.jsonl/.json or .parquet)."""
    field: Annotated[str, Field(min_length=1, max_length=256)] = "prompt"
    """Name of the record field that holds the prompt text."""


class Data(ApiModel):
    """Prompts and how they are batched."""

    prompts: PromptSource
    """Where the prompts come from."""
    batch_size: Annotated[int, Field(ge=1, le=1_048_576)] = 512
    """Prompts per iteration."""
    max_prompt_length: Annotated[int, Field(ge=1, le=1_048_576)] = 128
    """Prompts are truncated (from the left) to this many tokens."""
    shuffle_seed: Annotated[int, Field(ge=0, le=2**31 - 1)] = 0
    """Seed of the deterministic per-epoch shuffle; the position is saved in checkpoints."""


class Optimizer(ApiModel):
    """The optimizer of every trained role."""

    name: Literal["adamw"] = "adamw"
    """Optimizer (AdamW, decoupled weight decay)."""
    betas: Annotated[
        list[Annotated[float, Field(ge=0, lt=1)]], Field(min_length=2, max_length=2)
    ] = Field(default_factory=lambda: [0.9, 0.95])
    """Adam beta1 and beta2."""
    eps: Annotated[float, Field(gt=0, le=1)] = 1e-8
    """Adam epsilon."""
    weight_decay: Annotated[float, Field(ge=0, le=1)] = 0.0
    """Decoupled weight decay."""


class Training(ApiModel):
    """The training loop."""

    iterations: Annotated[int, Field(ge=1, le=10_000_000)] = 1
    """Iterations (generate, score, train) to run."""
    ppo_epochs: Annotated[int, Field(ge=1, le=64)] = 1
    """Passes over each iteration's samples."""
    minibatches: Annotated[int, Field(ge=1, le=4096)] = 1
    """Optimizer steps per epoch: the iteration's samples are split into this many minibatches."""
    actor_learning_rate: LearningRate = 1e-6
    """Actor learning rate."""
    critic_learning_rate: LearningRate = 5e-6
    """Critic learning rate."""
    optimizer: Optimizer = Field(default_factory=Optimizer)
    """Optimizer settings."""
    gradient_clipping: Annotated[float, Field(ge=0, le=1e6)] = 1.0
    """Clip the global gradient norm (across the whole model) to this; 0 disables."""
    seed: Annotated[int, Field(ge=0, le=2**31 - 1)] = 1
    """Seed of sampling and initialisation; the same seed gives the same run."""


GPU_TYPE_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]*$"


class Toleration(ApiModel):
    """A Kubernetes toleration for the worker pods."""

    key: str | None = None
    """Taint key; empty with operator Exists tolerates everything."""
    operator: Literal["Exists", "Equal"] = "Equal"
    """Exists or Equal."""
    value: str | None = None
    """Taint value, for operator Equal."""
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = None
    """Taint effect; empty matches all."""
    toleration_seconds: int | None = None
    """For NoExecute: how long the pod stays bound after the taint appears."""


class Images(ApiModel):
    """Container images; the operator's configured defaults apply when empty."""

    worker: Annotated[str | None, Field(min_length=1, max_length=1024)] = None
    """Worker image (torch, vLLM and the worker package)."""
    coordinator: Annotated[str | None, Field(min_length=1, max_length=1024)] = None
    """Coordinator image (the operator image)."""


QUANTITY_PATTERN = r"^[0-9]+(\.[0-9]+)?(m|k|M|G|T|P|Ki|Mi|Gi|Ti|Pi)?$"
Quantity = Annotated[str, Field(min_length=1, max_length=32, pattern=QUANTITY_PATTERN)]
EXTENDED_RESOURCE_PATTERN = (
    r"^([a-z0-9]([-a-z0-9.]*[a-z0-9])?/)?[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$"
)


class Rdma(ApiModel):
    """RDMA network devices (InfiniBand, RoCE) for NCCL between nodes."""

    resource_name: Annotated[
        str, Field(min_length=1, max_length=253, pattern=EXTENDED_RESOURCE_PATTERN)
    ]
    """The device plugin's extended resource, e.g. rdma/rdma_shared_device_a or nvidia.com/hostdev."""
    count: Annotated[int, Field(ge=1, le=64)] = 1
    """Devices each worker pod requests (one pod per node)."""


class CoordinatorResources(ApiModel):
    """What the coordinator pod requests (it runs no model: a CPU and some memory)."""

    cpu: Quantity = "500m"
    """CPU request."""
    memory: Quantity = "1Gi"
    """Memory request and limit."""


class LocalDevices(ApiModel):
    """Run on CPU slots without GPUs: one worker process per slot, gloo between them."""

    slots: Annotated[int, Field(ge=1, le=64)] = 2
    """Number of CPU worker slots (they play the role of GPUs in the plan)."""


class Resources(ApiModel):
    """Devices and pod placement. Set exactly one of gpus and local."""

    model_config = ConfigDict(
        json_schema_extra=cel_rules(
            ("has(self.gpus) != has(self.local)", "set exactly one of gpus and local"),
            (
                "!has(self.gpus) || self.gpus <= self.gpusPerNode || self.gpus % self.gpusPerNode == 0",
                "gpus must be at most gpusPerNode or a multiple of it",
                ".gpus",
            ),
        )
    )

    gpus: Annotated[int | None, Field(ge=1, le=65536)] = None
    """Total GPUs of the job."""
    gpus_per_node: Annotated[int, Field(ge=1, le=16)] = 8
    """GPUs of each node the job uses (one worker pod per node slot)."""
    gpu_type: Annotated[str, Field(min_length=1, max_length=64, pattern=GPU_TYPE_PATTERN)] = "H100"
    """Device profile the planner estimates with (H100, H200, A100-80GB, L40S, or a measured profile's name)."""
    local: LocalDevices | None = None
    """Run on CPU slots instead of GPUs (local mode and tests)."""
    images: Images = Field(default_factory=Images)
    """Container images."""
    node_selector: dict[str, str] = Field(default_factory=dict)
    """Node labels the worker pods (and the coordinator) require."""
    tolerations: list[Toleration] = Field(default_factory=list)
    """Tolerations of the worker pods (and the coordinator)."""
    affinity: FreeForm | None = None
    """Kubernetes affinity of the worker pods."""
    pod_template: FreeForm | None = None
    """Extra fields merged into every worker pod (metadata and spec), e.g. volumes, env, priority."""
    cpu_per_gpu: Quantity | None = None
    """CPU request of a worker pod per GPU it holds (per worker process); default 4 (1 per CPU slot)."""
    memory_per_gpu: Quantity | None = None
    """Memory request and limit of a worker pod per GPU; default 16Gi plus the host memory the plan keeps per GPU (offloaded roles); 2Gi per CPU slot."""
    rdma: Rdma | None = None
    """RDMA devices for each worker pod (adds the IPC_LOCK capability NCCL needs to pin memory)."""
    image_pull_secrets: list[Annotated[str, Field(min_length=1, max_length=253)]] = Field(
        default_factory=list
    )
    """Secrets (names) to pull the images with: every pod of the job and its coordinator's ServiceAccount."""
    coordinator: CoordinatorResources = Field(default_factory=CoordinatorResources)
    """The coordinator pod's requests (it also takes the job's nodeSelector, tolerations and pull secrets)."""


MESH_PATTERN = r"^[0-9]{1,5}(-[0-9]{1,5})?(:[0-9]{1,2}(-[0-9]{1,2})?)?$"
_MESH_RE = re.compile(MESH_PATTERN)


def parse_mesh(text: str) -> tuple[int, int, int, int] | None:
    """Parse a mesh string into (first node, last node, first gpu, last gpu).

    "N" or "N-M": whole nodes N..M; "N:A-B": GPUs A..B of node N. The GPU range
    is None-free: for whole nodes it is returned as (0, -1), meaning all GPUs.
    Returns None if the text is not a mesh.
    """
    if not _MESH_RE.match(text):
        return None
    nodes, _, gpus = text.partition(":")
    n0, _, n1 = nodes.partition("-")
    first_node, last_node = int(n0), int(n1 or n0)
    if not gpus:
        return first_node, last_node, 0, -1
    g0, _, g1 = gpus.partition("-")
    return first_node, last_node, int(g0), int(g1 or g0)


class CallPlacement(ApiModel):
    """Where one call runs and how the role is split there."""

    mesh: Annotated[str, Field(pattern=MESH_PATTERN)]
    """Devices: "N" or "N-M" for whole nodes N..M, "N:A-B" for GPUs (or CPU slots) A..B of node N."""
    dp: PositiveInt = 1
    """Data-parallel degree."""
    tp: PositiveInt = 1
    """Tensor-parallel degree."""
    pp: PositiveInt = 1
    """Pipeline-parallel degree (stages)."""
    micro_batches: PositiveInt = 1
    """Micro-batches per data-parallel rank (pipeline depth for pp > 1)."""
    recompute: bool = False
    """Training calls: recompute each layer's activations in the backward (less memory, one more forward)."""
    zero_stage: Literal[1, 2] = 1
    """Training calls: 1 shards the fp32 master weights and AdamW moments over dp; 2 shards the fp32 gradients too (less memory, a reduce-scatter per parameter and micro-batch)."""


class Placement(ApiModel):
    """How the operator chooses where each call runs."""

    model_config = ConfigDict(
        json_schema_extra=cel_rules(
            (
                "self.strategy == 'manual' || !has(self.calls) || size(self.calls) == 0",
                "calls may only be given with strategy manual",
                ".calls",
            ),
            (
                "self.strategy != 'manual' || (has(self.calls) && size(self.calls) > 0)",
                "strategy manual needs calls",
                ".calls",
            ),
        )
    )

    strategy: Literal["search", "heuristic", "colocated", "manual"] = "search"
    """search: execution-plan search with the runtime estimator; heuristic: a Megatron-style rule; colocated: every call on all devices; manual: as given in calls."""
    search_seconds: Annotated[float, Field(gt=0, le=3600)] = 10.0
    """Time budget of the search."""
    calls: dict[str, CallPlacement] = Field(default_factory=dict)
    """For strategy manual: the placement of every call of the algorithm, by call name."""
    in_place_resharding: bool = False
    """Keep each trained role's generation copy between iterations, with the role's training shards stored inside it where they fit (a tp2 half inside the tp1 whole; HybridFlow's zero-redundancy resharding): from the second iteration on, resharding for generation receives only what each device lacks and copies nothing locally, at the cost of holding the generation copy's memory all the time (the planner counts it). Off: copies are made before each call and freed after it, as in ReaL."""


class Checkpoint(ApiModel):
    """Periodic checkpoints; a job resumes from the newest complete one."""

    path: Annotated[str | None, Field(min_length=1, max_length=4096)] = None
    """Directory on a shared volume; defaults to the job's output directory in local mode."""
    interval: Annotated[int, Field(ge=1, le=10_000_000)] = 10
    """Save every this many iterations (and at the end)."""
    keep: Annotated[int, Field(ge=1, le=1000)] = 2
    """Complete checkpoints to keep."""


class Export(ApiModel):
    """Where the trained actor goes at the end, in Hugging Face format."""

    path: Annotated[str | None, Field(min_length=1, max_length=4096)] = None
    """Directory for config.json, safetensors and tokenizer of the final actor."""


class Scheduling(ApiModel):
    """Hand-off to a batch scheduler."""

    scheduler_name: Annotated[str | None, Field(min_length=1, max_length=253)] = None
    """Pod schedulerName (e.g. volcano); a PodGroup is created for gang scheduling."""
    queue: Annotated[str | None, Field(min_length=1, max_length=253)] = None
    """Queue (Volcano queue or Kueue LocalQueue name)."""
    priority_class_name: Annotated[str | None, Field(min_length=1, max_length=253)] = None
    """PriorityClass of the job's pods."""


# Once a job exists only these fields of its spec may change: the operator reads them at
# every reconcile. Everything else is what the job was planned with (its ConfigMap's
# job.yaml, which its coordinator runs): a change would leave the two apart. The CRD's
# transition rules refuse the others (`immutable_rules`); the operator refuses what an
# older CRD let through (`k8s.frozen`).
MUTABLE_FIELDS = (
    "suspend",
    "runPolicy.backoffLimit",
    "runPolicy.activeDeadlineSeconds",
    "runPolicy.ttlSecondsAfterFinished",
)
IMMUTABLE = (
    "cannot change once the job exists (only suspend and runPolicy's backoffLimit, "
    "activeDeadlineSeconds and ttlSecondsAfterFinished can): delete the job and apply it again"
)


def immutable_rules(paths: tuple[str, ...], prefix: str) -> list[tuple[str, str, str]]:
    """CEL transition rules (oldSelf: run on updates only) keeping each field (a dotted
    path below the object the rules sit on) as it was, present or absent. They sit on
    the spec, whose old value always exists on an update: a rule on an optional object
    below it would not run when that object is added or removed."""

    def present(root: str, path: str) -> str:
        parts = path.split(".")
        return " && ".join(f"has({root}.{'.'.join(parts[: i + 1])})" for i in range(len(parts)))

    rules = []
    for path in paths:
        new, old = present("self", path), present("oldSelf", path)
        rule = f"({new}) == ({old}) && (!({new}) || self.{path} == oldSelf.{path})"
        rules.append((rule, f"{prefix}.{path} {IMMUTABLE}", f".{path}"))
    return rules


class RunPolicy(ApiModel):
    """Failure handling and lifetime."""

    backoff_limit: Annotated[int, Field(ge=0, le=1000)] = 3
    """Restarts of the job's pods (resuming from the last checkpoint) after failures
    before the job fails; restarts after disruptions (a pod evicted, preempted or
    drained) do not count."""
    active_deadline_seconds: Annotated[int | None, Field(ge=1)] = None
    """Fail the job if it runs longer than this."""
    ttl_seconds_after_finished: Annotated[int | None, Field(ge=0)] = None
    """Delete the finished job (and its children) after this long."""
    scheduling: Scheduling = Field(default_factory=Scheduling)
    """Batch-scheduler integration."""


IMMUTABLE_SPEC_FIELDS = (
    "models",
    "algorithm",
    "rollout",
    "data",
    "training",
    "resources",
    "placement",
    "checkpoint",
    "export",
    "runPolicy.scheduling",
)


class RLHFJobSpec(ApiModel):
    """The desired RLHF training run."""

    model_config = ConfigDict(
        json_schema_extra=cel_rules(*immutable_rules(IMMUTABLE_SPEC_FIELDS, "spec"))
    )

    models: Models
    """Models by role."""
    algorithm: Algorithm = Field(default_factory=Algorithm)
    """The RLHF algorithm and its hyper-parameters."""
    rollout: Rollout = Field(default_factory=Rollout)
    """Response generation."""
    data: Data
    """Prompts."""
    training: Training = Field(default_factory=Training)
    """The training loop."""
    resources: Resources
    """Devices and pod placement."""
    placement: Placement = Field(default_factory=Placement)
    """How calls are placed on devices."""
    checkpoint: Checkpoint = Field(default_factory=Checkpoint)
    """Checkpointing."""
    export: Export = Field(default_factory=Export)
    """Export of the final actor."""
    suspend: bool = False
    """Suspend the job: pods are removed, checkpoints kept; false again resumes (Kueue-compatible)."""
    run_policy: RunPolicy = Field(default_factory=RunPolicy)
    """Failure handling, deadlines and scheduling."""

    @property
    def samples_per_prompt(self) -> int:
        """Responses generated per prompt, resolved from rollout and algorithm."""
        return self.rollout.samples_per_prompt or self.algorithm.group_size or 1

    @property
    def device_count(self) -> int:
        """GPUs, or CPU slots in local mode."""
        if self.resources.local is not None:
            return self.resources.local.slots
        return self.resources.gpus or 0

    @property
    def devices_per_node(self) -> int:
        """GPUs per node, or all CPU slots on the one local node."""
        if self.resources.local is not None:
            return self.resources.local.slots
        return self.resources.gpus_per_node
