"""The workload of one iteration: the roles' model shapes and the calls' sizes.

Built from the job: each role's architecture (its Hugging Face config fields),
the batch (prompts x samples per prompt), prompt and generation lengths, PPO
epochs and minibatches, and the algorithm's call DAG (`api.dataflow`).
Lengths are the maxima (`maxPromptLength`, `maxNewTokens`): the estimate is
for full-length sequences, an upper bound of what runs.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..api.dataflow import TRAINED_ROLES, Call, calls_for, dependencies
from ..api.job import RLHFJob
from ..api.models import ArchitectureConfig, ModelSpec
from ..contract.sharding import HeadKind, ModelShape, ParamCounts, role_head, role_values

DTYPE_BYTES = {"bfloat16": 2, "float16": 2, "float32": 4}


@dataclass(frozen=True)
class RoleModel:
    """One role's model, as the planner sees it: its shape (the workers' own parameter
    list, `contract.sharding.ModelShape`) counted per layer and stage."""

    name: str
    arch: ArchitectureConfig | None  # None: a reward function (no model)
    dtype_bytes: int = 2
    trainable: bool = False
    value_head: bool = False  # critic/reward/cost: a scalar head instead of the vocabulary head
    num_values: int = 1  # outputs of the value head (2: Safe-RLHF's critic)
    shape: ModelShape | None = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        shape = None
        if self.arch is not None:
            head: HeadKind = "value" if self.value_head else "lm"
            shape = ModelShape.from_architecture(self.arch, head, self.num_values)
        object.__setattr__(self, "shape", shape)

    @property
    def is_function(self) -> bool:
        return self.arch is None

    def _counts(self) -> ParamCounts:
        assert self.shape is not None
        return self.shape.counts

    # --- parameters (elements), split as the worker splits them -------------
    @property
    def layers(self) -> int:
        return self.shape.num_layers if self.shape else 0

    @property
    def layer_split_params(self) -> int:
        """Per decoder layer: q/k/v/o and gate/up/down (and Qwen2's q/k/v biases), split by
        tensor parallelism."""
        return self._counts().layer_split

    @property
    def layer_replicated_params(self) -> int:
        """Per decoder layer: the two RMSNorm weights (replicated across tp)."""
        return self._counts().layer_replicated

    @property
    def tensors_per_layer(self) -> int:
        """Parameter tensors per decoder layer (ZeRO-2 reduces each one separately)."""
        return self._counts().layer_tensors

    @property
    def embedding_params(self) -> int:
        return self._counts().first_split

    @property
    def head_split_params(self) -> int:
        """The vocabulary head (split along the vocabulary); 0 for a value head.

        With tied embeddings the last stage holds a copy of the embedding; it is
        counted as the head (exact for pp > 1, one copy too many at pp = 1).
        """
        return self._counts().last_split

    @property
    def head_replicated_params(self) -> int:
        """Final norm, plus the value head (`score.weight`, values x hidden) for value models."""
        return self._counts().last_replicated

    @property
    def params(self) -> int:
        if self.arch is None:
            return 0
        return (
            self.layers * (self.layer_split_params + self.layer_replicated_params)
            + self.embedding_params
            + self.head_split_params
            + self.head_replicated_params
        )

    @property
    def param_bytes(self) -> int:
        return self.params * self.dtype_bytes

    # --- FLOPs ----------------------------------------------------------------
    def forward_flops(self, tokens: float, context: float) -> float:
        """FLOPs of a forward pass over `tokens` new tokens that each attend to `context` tokens on average."""
        if self.shape is None:
            return 0.0
        a = self.shape
        matmul = self.layers * self.layer_split_params + self.head_split_params
        if self.value_head:
            matmul += a.num_values * a.hidden_size
        attention = 4 * self.layers * a.num_heads * a.head_dim * context
        return tokens * (2 * matmul + attention)


@dataclass(frozen=True)
class Workload:
    """One iteration of a job, in numbers."""

    name: str
    algorithm: str
    roles: dict[str, RoleModel]
    calls: tuple[Call, ...]
    deps: dict[str, tuple[str, ...]]
    samples: int  # sequences per iteration (prompts x samples per prompt)
    prompt_len: int
    gen_len: int
    ppo_epochs: int = 1
    minibatches: int = 1
    backend: str = "torch"
    # spec.placement.inPlaceResharding: trained roles keep their generation copy.
    in_place_resharding: bool = False

    @property
    def seq_len(self) -> int:
        return self.prompt_len + self.gen_len

    @property
    def tokens(self) -> int:
        """Tokens per iteration (prompt + generated), the throughput numerator."""
        return self.samples * self.seq_len

    def call(self, name: str) -> Call:
        for c in self.calls:
            if c.name == name:
                return c
        raise KeyError(name)

    def batch(self, call: Call) -> int:
        """Sequences one pass of the call processes: a minibatch for training, else all."""
        if call.kind == "train":
            return self.samples // self.minibatches
        return self.samples

    def passes(self, call: Call) -> int:
        """How many times the call's batch is processed per iteration (optimizer steps for training)."""
        return self.ppo_epochs * self.minibatches if call.kind == "train" else 1

    def call_flops(self, call: Call) -> float:
        """Model FLOPs of a call in one iteration (the PFLOP/s numerator)."""
        role = self.roles[call.role]
        n, p, g = self.samples, self.prompt_len, self.gen_len
        if call.kind == "generate":
            prefill = role.forward_flops(n * p, p / 2)
            decode = role.forward_flops(n * max(g - 1, 0), p + g / 2)
            return prefill + decode
        fwd = role.forward_flops(n * (p + g), (p + g) / 2)
        if call.kind == "inference":
            return fwd
        return 3 * fwd * self.ppo_epochs

    def flops(self) -> float:
        return sum(self.call_flops(c) for c in self.calls)


def role_models(job: RLHFJob) -> dict[str, RoleModel]:
    spec = job.spec
    algorithm = spec.algorithm.name
    trained = TRAINED_ROLES[algorithm]
    out: dict[str, RoleModel] = {}
    for name, model in spec.models.present().items():
        arch = model.architecture.resolve() if model.architecture is not None else None
        dtype = DTYPE_BYTES[model.dtype]
        if isinstance(model, ModelSpec) or arch is not None:
            out[name] = RoleModel(
                name,
                arch,
                dtype,
                name in trained,
                value_head=role_head(name) == "value",
                num_values=role_values(name, algorithm),
            )
        else:
            out[name] = RoleModel(name, None, dtype, False)
    return out


def workload_for(job: RLHFJob) -> Workload:
    spec = job.spec
    roles = role_models(job)
    calls = calls_for(spec.algorithm.name, set(roles))
    return Workload(
        name=job.metadata.name,
        algorithm=spec.algorithm.name,
        roles=roles,
        calls=calls,
        deps=dependencies(calls),
        samples=spec.data.batch_size * spec.samples_per_prompt,
        prompt_len=spec.data.max_prompt_length,
        gen_len=spec.rollout.max_new_tokens,
        ppo_epochs=spec.training.ppo_epochs,
        minibatches=spec.training.minibatches,
        backend=spec.rollout.backend,
        in_place_resharding=spec.placement.in_place_resharding,
    )
