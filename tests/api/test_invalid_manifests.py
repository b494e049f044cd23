"""A corpus of invalid manifests: each gives the expected one-line error.

Every case starts from a valid example, breaks one thing, and states the line
`rlhfctl validate` must print (a field path and a message fragment) and which
layer of a real cluster would refuse it: the CRD's OpenAPI schema ("schema"),
its CEL rules ("cel"), or only the semantic checks the operator runs
("semantic"; the API server accepts the object, the operator marks it
Valid=False). "pruned" marks unknown fields, which the API server silently
drops and `rlhfctl validate` reports.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from rlhf_operator.api.manifests import validate_text

from .crd_semantics import cel_violations, schema_errors

ROOT = Path(__file__).resolve().parents[2]
Manifest = dict[str, Any]


def _example(name: str) -> Manifest:
    doc: Manifest = yaml.safe_load((ROOT / "examples" / name).read_text())
    return doc


PPO = _example("tiny-ppo.yaml")
GRPO = _example("tiny-grpo.yaml")
GPU = _example("llama7b-ppo-8gpu.yaml")


def _set(path: str, value: Any) -> Callable[[Manifest], None]:
    """Mutation: set a dotted path (creating mappings on the way)."""

    def mutate(doc: Manifest) -> None:
        *parents, last = path.split(".")
        node = doc
        for key in parents:
            node = node.setdefault(key, {})
        node[last] = copy.deepcopy(value)  # cases must not share (and mutate) values

    return mutate


def _delete(path: str) -> Callable[[Manifest], None]:
    def mutate(doc: Manifest) -> None:
        *parents, last = path.split(".")
        node = doc
        for key in parents:
            node = node[key]
        del node[last]

    return mutate


def _all(*mutations: Callable[[Manifest], None]) -> Callable[[Manifest], None]:
    def mutate(doc: Manifest) -> None:
        for m in mutations:
            m(doc)

    return mutate


TINY_ARCH = {"preset": "tiny"}
MANUAL_PPO = _all(
    _set("spec.resources.local.slots", 4),
    _set(
        "spec.placement",
        {
            "strategy": "manual",
            "calls": {
                "actor_gen": {"mesh": "0:0-1", "tp": 2},
                "ref_inf": {"mesh": "0:2"},
                "reward_inf": {"mesh": "0:3"},
                "critic_inf": {"mesh": "0:2-3", "dp": 2},
                "actor_train": {"mesh": "0:0-3", "dp": 2, "tp": 2},
                "critic_train": {"mesh": "0:2-3", "dp": 2},
            },
        },
    ),
)

# (id, base, mutation, expected path, expected message fragment, layer)
CASES: list[tuple[str, Manifest, Callable[[Manifest], None], str, str, str]] = [
    (
        "unknown-spec-field",
        PPO,
        _set("spec.replicas", 3),
        "spec.replicas",
        "unknown field",
        "pruned",
    ),
    (
        "misspelt-model-field",
        PPO,
        _set("spec.models.actor.dtpye", "float32"),
        "spec.models.actor.dtpye",
        "unknown field",
        "pruned",
    ),
    (
        "bad-dtype",
        PPO,
        _set("spec.models.actor.dtype", "fp8"),
        "spec.models.actor.dtype",
        "'bfloat16', 'float16' or 'float32'",
        "schema",
    ),
    (
        "missing-actor",
        PPO,
        _delete("spec.models.actor"),
        "spec.models.actor",
        "required field is missing",
        "schema",
    ),
    ("missing-data", PPO, _delete("spec.data"), "spec.data", "required field is missing", "schema"),
    (
        "missing-resources",
        PPO,
        _delete("spec.resources"),
        "spec.resources",
        "required field is missing",
        "schema",
    ),
    (
        "preset-and-config",
        PPO,
        _set(
            "spec.models.actor.architecture.config",
            {
                "hiddenSize": 64,
                "intermediateSize": 128,
                "numHiddenLayers": 2,
                "numAttentionHeads": 4,
                "vocabSize": 512,
            },
        ),
        "spec.models.actor.architecture",
        "set exactly one of preset and config",
        "cel",
    ),
    (
        "empty-source",
        PPO,
        _set("spec.models.critic.source", {}),
        "spec.models.critic.source",
        "set exactly one of path and tiny",
        "cel",
    ),
    (
        "unknown-preset",
        PPO,
        _set("spec.models.actor.architecture.preset", "llama3-8b"),
        "spec.models.actor.architecture.preset",
        "Input should be 'tiny'",
        "schema",
    ),
    (
        "reward-function-and-model",
        PPO,
        _set("spec.models.reward.source", {"tiny": {}}),
        "spec.models.reward",
        "set exactly one of rewardFunction and source",
        "cel",
    ),
    (
        "reward-function-syntax",
        PPO,
        _set("spec.models.reward.rewardFunction", "rewards.py"),
        "spec.models.reward.rewardFunction",
        "must be module:function",
        "schema",
    ),
    (
        "reward-model-without-architecture",
        PPO,
        _all(
            _delete("spec.models.reward.rewardFunction"),
            _set("spec.models.reward.source", {"tiny": {}}),
        ),
        "spec.models.reward",
        "a model source needs an architecture",
        "cel",
    ),
    (
        "ppo-without-critic",
        PPO,
        _delete("spec.models.critic"),
        "spec.models.critic",
        "ppo needs a critic model",
        "semantic",
    ),
    (
        "grpo-with-critic",
        GRPO,
        _set("spec.models.critic", {"source": {"tiny": {}}, "architecture": TINY_ARCH}),
        "spec.models.critic",
        "grpo does not use a critic model",
        "semantic",
    ),
    (
        "cost-outside-safe-rlhf",
        PPO,
        _set("spec.models.cost", {"rewardFunction": "a:b"}),
        "spec.models.cost",
        "ppo does not use a cost model",
        "semantic",
    ),
    (
        "safe-rlhf-without-cost",
        PPO,
        _set("spec.algorithm", {"name": "safe-rlhf"}),
        "spec.models.cost",
        "safe-rlhf needs a cost model",
        "semantic",
    ),
    (
        "ref-missing-with-kl",
        PPO,
        _delete("spec.models.ref"),
        "spec.models.ref",
        "needs a ref model (or set the KL coefficient to 0)",
        "semantic",
    ),
    (
        "frozen-actor",
        PPO,
        _set("spec.models.actor.trainable", False),
        "spec.models.actor.trainable",
        "the actor model is trained",
        "semantic",
    ),
    (
        "fp16-trained-actor",
        PPO,
        _set("spec.models.actor.dtype", "float16"),
        "spec.models.actor.dtype",
        "float16 training needs loss scaling, which is not supported; use bfloat16",
        "semantic",
    ),
    (
        "trainable-ref",
        PPO,
        _set("spec.models.ref.trainable", True),
        "spec.models.ref.trainable",
        "the ref model is frozen",
        "semantic",
    ),
    (
        "unknown-algorithm",
        PPO,
        _set("spec.algorithm.name", "dpo"),
        "spec.algorithm.name",
        "Input should be 'ppo'",
        "schema",
    ),
    (
        "params-of-other-algorithm",
        PPO,
        _set("spec.algorithm.grpo", {"groupSize": 4}),
        "spec.algorithm.grpo",
        "only allowed when name is grpo",
        "cel",
    ),
    (
        "negative-kl",
        PPO,
        _set("spec.algorithm.ppo.klCoef", -0.1),
        "spec.algorithm.ppo.klCoef",
        "greater than or equal to 0",
        "schema",
    ),
    (
        "zero-clip-ratio",
        PPO,
        _set("spec.algorithm.ppo.clipRatio", 0),
        "spec.algorithm.ppo.clipRatio",
        "greater than 0",
        "schema",
    ),
    (
        "group-of-one",
        GRPO,
        _set("spec.algorithm.grpo.groupSize", 1),
        "spec.algorithm.grpo.groupSize",
        "greater than or equal to 2",
        "schema",
    ),
    (
        "samples-differ-from-group",
        GRPO,
        _set("spec.rollout.samplesPerPrompt", 3),
        "spec.rollout.samplesPerPrompt",
        "differs from the grpo groupSize 4",
        "semantic",
    ),
    (
        "top-p-zero",
        PPO,
        _set("spec.rollout.topP", 0),
        "spec.rollout.topP",
        "greater than 0",
        "schema",
    ),
    (
        "negative-temperature",
        PPO,
        _set("spec.rollout.temperature", -1),
        "spec.rollout.temperature",
        "greater than or equal to 0",
        "schema",
    ),
    (
        "unknown-backend",
        PPO,
        _set("spec.rollout.backend", "sglang"),
        "spec.rollout.backend",
        "'torch' or 'vllm'",
        "schema",
    ),
    (
        "zero-new-tokens",
        PPO,
        _set("spec.rollout.maxNewTokens", 0),
        "spec.rollout.maxNewTokens",
        "greater than or equal to 1",
        "schema",
    ),
    (
        "minibatches-do-not-divide",
        PPO,
        _set("spec.training.minibatches", 5),
        "spec.training.minibatches",
        "do not split into 5 equal minibatches",
        "semantic",
    ),
    (
        "context-too-long",
        PPO,
        _set("spec.rollout.maxNewTokens", 2000),
        "spec.models.actor.architecture",
        "exceeds the actor model's maxPositionEmbeddings 1024",
        "semantic",
    ),
    (
        "prompt-format-unknown",
        PPO,
        _set("spec.data.prompts.path", "data/prompts.txt"),
        "spec.data.prompts.format",
        "cannot tell the format",
        "semantic",
    ),
    (
        "gpus-and-local",
        PPO,
        _set("spec.resources.gpus", 8),
        "spec.resources",
        "set exactly one of gpus and local",
        "cel",
    ),
    (
        "gpus-not-multiple-of-node",
        GPU,
        _set("spec.resources.gpus", 12),
        "spec.resources.gpus",
        "multiple of it",
        "cel",
    ),
    (
        "gpus-not-integer",
        GPU,
        _set("spec.resources.gpus", "eight"),
        "spec.resources.gpus",
        "valid integer",
        "schema",
    ),
    (
        "calls-without-manual",
        PPO,
        _set("spec.placement.calls", {"actor_gen": {"mesh": "0"}}),
        "spec.placement.calls",
        "only be given with strategy manual",
        "cel",
    ),
    (
        "manual-without-calls",
        PPO,
        _set("spec.placement.strategy", "manual"),
        "spec.placement.calls",
        "strategy manual needs calls",
        "cel",
    ),
    (
        "manual-missing-call",
        GRPO,
        _delete("spec.placement.calls.ref_inf"),
        "spec.placement.calls",
        "no placement for call ref_inf",
        "semantic",
    ),
    (
        "manual-unknown-call",
        GRPO,
        _set("spec.placement.calls.critic_inf", {"mesh": "0:0"}),
        "spec.placement.calls.critic_inf",
        "grpo has no call critic_inf",
        "semantic",
    ),
    (
        "mesh-syntax",
        GRPO,
        _set("spec.placement.calls.ref_inf.mesh", "node0"),
        "spec.placement.calls.ref_inf.mesh",
        "must be a mesh",
        "schema",
    ),
    (
        "mesh-node-out-of-range",
        GRPO,
        _set("spec.placement.calls.ref_inf.mesh", "1"),
        "spec.placement.calls.ref_inf.mesh",
        "node 1 does not exist",
        "semantic",
    ),
    (
        "mesh-unaligned",
        _example("tiny-ppo.yaml"),
        _all(MANUAL_PPO, _set("spec.placement.calls.critic_inf.mesh", "0:1-2")),
        "spec.placement.calls.critic_inf.mesh",
        "not an aligned power-of-two block",
        "semantic",
    ),
    (
        "mesh-size-mismatch",
        GRPO,
        _set("spec.placement.calls.actor_train.dp", 1),
        "spec.placement.calls.actor_train",
        "dp*tp*pp = 1*1*1 = 1 but mesh '0:0-1' has 2 devices",
        "semantic",
    ),
    (
        "pp-exceeds-layers",
        _example("tiny-ppo.yaml"),
        _all(
            MANUAL_PPO,
            _set(
                "spec.models.actor.architecture",
                {
                    "config": {
                        "hiddenSize": 256,
                        "intermediateSize": 512,
                        "numHiddenLayers": 1,
                        "numAttentionHeads": 8,
                        "numKeyValueHeads": 4,
                        "vocabSize": 512,
                        "maxPositionEmbeddings": 1024,
                    }
                },
            ),
            _set(
                "spec.models.ref.architecture",
                {
                    "config": {
                        "hiddenSize": 256,
                        "intermediateSize": 512,
                        "numHiddenLayers": 1,
                        "numAttentionHeads": 8,
                        "numKeyValueHeads": 4,
                        "vocabSize": 512,
                        "maxPositionEmbeddings": 1024,
                    }
                },
            ),
            _set("spec.placement.calls.actor_train", {"mesh": "0:0-3", "pp": 2, "dp": 2}),
        ),
        "spec.placement.calls.actor_train.pp",
        "pp 2 exceeds the model's 1 layers",
        "semantic",
    ),
    (
        "meshes-partly-overlap",
        GPU,
        _all(
            _set("spec.resources.gpus", 24),
            _set(
                "spec.placement",
                {
                    "strategy": "manual",
                    "calls": {
                        "actor_gen": {"mesh": "0-1", "tp": 8, "dp": 2},
                        "ref_inf": {"mesh": "1-2", "tp": 8, "dp": 2},
                        "reward_inf": {"mesh": "2", "tp": 8},
                        "critic_inf": {"mesh": "2", "tp": 8},
                        "actor_train": {"mesh": "0-2", "tp": 8, "dp": 1, "pp": 3},
                        "critic_train": {"mesh": "2", "tp": 8},
                    },
                },
            ),
        ),
        "spec.placement.calls.ref_inf.mesh",
        "partly overlaps actor_gen's mesh",
        "semantic",
    ),
    (
        "vocab-mismatch",
        PPO,
        _set("spec.models.critic.architecture", {"preset": "llama2-7b"}),
        "spec.models.critic.architecture",
        "differs from the actor's 512",
        "semantic",
    ),
    (
        "heads-do-not-divide-hidden",
        PPO,
        _all(
            *[
                _set(
                    f"spec.models.{r}.architecture",
                    {
                        "config": {
                            "hiddenSize": 250,
                            "intermediateSize": 512,
                            "numHiddenLayers": 2,
                            "numAttentionHeads": 8,
                            "numKeyValueHeads": 4,
                            "vocabSize": 512,
                        }
                    },
                )
                for r in ("actor", "ref")
            ]
        ),
        "spec.models.actor.architecture.config.numAttentionHeads",
        "not divisible by numAttentionHeads 8",
        "semantic",
    ),
    (
        "bad-toleration-operator",
        GPU,
        _set("spec.resources.tolerations", [{"key": "a", "operator": "In"}]),
        "spec.resources.tolerations[0].operator",
        "'Exists' or 'Equal'",
        "schema",
    ),
    (
        "three-betas",
        PPO,
        _set("spec.training.optimizer", {"betas": [0.9, 0.95, 0.99]}),
        "spec.training.optimizer.betas",
        "at most 2 items",
        "schema",
    ),
    (
        "zero-checkpoint-interval",
        PPO,
        _set("spec.checkpoint.interval", 0),
        "spec.checkpoint.interval",
        "greater than or equal to 1",
        "schema",
    ),
    (
        "name-too-long",
        PPO,
        _set("metadata.name", "a" * 50),
        "metadata.name",
        "at most 45 characters",
        "cel",
    ),
    (
        "name-not-dns",
        PPO,
        _set("metadata.name", "Tiny_PPO"),
        "metadata.name",
        "must be lowercase letters",
        "apiserver",
    ),
]


def _broken(base: Manifest, mutate: Callable[[Manifest], None]) -> Manifest:
    doc = copy.deepcopy(base)
    mutate(doc)
    return doc


@pytest.mark.parametrize(
    ("case", "base", "mutate", "path", "fragment", "layer"), CASES, ids=[c[0] for c in CASES]
)
def test_validate_names_field_and_problem(
    case: str,
    base: Manifest,
    mutate: Callable[[Manifest], None],
    path: str,
    fragment: str,
    layer: str,
) -> None:
    text = yaml.safe_dump(_broken(base, mutate), sort_keys=False)
    documents, problems = validate_text(text, "job.yaml")
    assert problems == []
    lines = [str(p) for d in documents for p in d.problems]
    assert lines, f"{case}: expected an error"
    assert all("\n" not in line and "Traceback" not in line for line in lines)
    name = base["metadata"]["name"] if case not in ("name-too-long", "name-not-dns") else None
    matching = [
        line
        for line in lines
        if line.startswith("job.yaml[0]: ") and f" {path}: " in line and fragment in line
    ]
    assert matching, f"{case}: no line names {path!r} with {fragment!r}: {lines}"
    if name:
        assert all(f"RLHFJob/{name}:" in line for line in lines)


@pytest.mark.parametrize(
    ("case", "base", "mutate", "path", "fragment", "layer"), CASES, ids=[c[0] for c in CASES]
)
def test_cluster_layer_refusing_each_case(
    case: str,
    base: Manifest,
    mutate: Callable[[Manifest], None],
    path: str,
    fragment: str,
    layer: str,
) -> None:
    """The CRD refuses what it can (schema or CEL) and accepts what only the operator checks."""
    doc = _broken(base, mutate)
    schema, cel = schema_errors(doc), cel_violations(doc) if not schema_errors(doc) else []
    if layer == "schema":
        assert schema, f"{case}: the CRD schema should refuse it"
    elif layer == "cel":
        assert not schema and cel, f"{case}: a CEL rule should refuse it (schema: {schema})"
        expected = fragment if fragment != "at most 45 characters" else "45 characters"
        assert any(expected in c for c in cel), cel
    else:  # semantic, pruned and apiserver: the CRD itself lets it through
        assert not schema and not cel, f"{case}: {schema or cel}"


def test_there_are_at_least_thirty_distinct_cases() -> None:
    assert len({c[0] for c in CASES}) == len(CASES) >= 30
