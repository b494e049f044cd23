"""Semantic checks of a job: the rules field types and bounds cannot state.

`semantic_errors(job)` is a pure function returning every problem as a
(field path, message) pair, so one run of `rlhfctl validate` reports them all.
The first group mirrors the CRD's CEL rules (the API server enforces those on
apply; a test runs a CEL engine over the same manifests so both agree); the
rest need knowledge the CRD does not have: the algorithms' call graphs,
architectures behind presets, and mesh geometry.
"""

from __future__ import annotations

from dataclasses import dataclass

from .dataflow import REQUIRED_ROLES, TRAINED_ROLES, calls_for
from .job import RLHFJob
from .models import ArchitectureConfig, RewardModelSpec
from .spec import CallPlacement, RLHFJobSpec, parse_mesh


@dataclass(frozen=True)
class FieldError:
    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"


def semantic_errors(job: RLHFJob) -> list[FieldError]:
    spec = job.spec
    errors: list[FieldError] = []
    errors += _exactly_one_rules(spec)
    errors += _role_errors(spec)
    errors += _architecture_errors(spec)
    errors += _batch_errors(spec)
    errors += _data_errors(spec)
    if not any(e.path.startswith("spec.models") for e in errors):
        errors += _placement_errors(spec)
    return errors


# --- the CRD's CEL rules, restated -------------------------------------------


def _exactly_one_rules(spec: RLHFJobSpec) -> list[FieldError]:
    errors = []
    for role, model in spec.models.present().items():
        base = f"spec.models.{role}"
        if isinstance(model, RewardModelSpec):
            if (model.reward_function is None) == (model.source is None):
                errors.append(FieldError(base, "set exactly one of rewardFunction and source"))
            if (model.source is None) != (model.architecture is None):
                errors.append(
                    FieldError(
                        base,
                        "a model source needs an architecture, and an architecture needs a source",
                    )
                )
        if model.source is not None and (model.source.path is None) == (model.source.tiny is None):
            errors.append(FieldError(f"{base}.source", "set exactly one of path and tiny"))
        arch = model.architecture
        if arch is not None and (arch.preset is None) == (arch.config is None):
            errors.append(
                FieldError(f"{base}.architecture", "set exactly one of preset and config")
            )
    for field in ("ppo", "grpo", "remax", "rloo", "safe_rlhf"):
        alias = "safeRlhf" if field == "safe_rlhf" else field
        name = "safe-rlhf" if field == "safe_rlhf" else field
        if getattr(spec.algorithm, field) is not None and spec.algorithm.name != name:
            errors.append(
                FieldError(
                    f"spec.algorithm.{alias}",
                    f"{alias} parameters are only allowed when name is {name} (name is {spec.algorithm.name})",
                )
            )
    res = spec.resources
    if (res.gpus is None) == (res.local is None):
        errors.append(FieldError("spec.resources", "set exactly one of gpus and local"))
    if res.gpus is not None and res.gpus > res.gpus_per_node and res.gpus % res.gpus_per_node:
        errors.append(
            FieldError(
                "spec.resources.gpus",
                f"gpus must be at most gpusPerNode or a multiple of it ({res.gpus} GPUs, {res.gpus_per_node} per node)",
            )
        )
    placement = spec.placement
    if placement.strategy != "manual" and placement.calls:
        errors.append(
            FieldError("spec.placement.calls", "calls may only be given with strategy manual")
        )
    if placement.strategy == "manual" and not placement.calls:
        errors.append(FieldError("spec.placement.calls", "strategy manual needs calls"))
    return errors


# --- roles --------------------------------------------------------------------


def _role_errors(spec: RLHFJobSpec) -> list[FieldError]:
    algo = spec.algorithm.name
    present = spec.models.present()
    kl_on = spec.algorithm.params().kl_coef > 0
    errors = []
    for role in REQUIRED_ROLES[algo]:
        if role in present or (role == "ref" and not kl_on):
            continue
        why = " (or set the KL coefficient to 0)" if role == "ref" else ""
        errors.append(FieldError(f"spec.models.{role}", f"{algo} needs a {role} model{why}"))
    for role in present:
        if role not in REQUIRED_ROLES[algo]:
            errors.append(
                FieldError(f"spec.models.{role}", f"{algo} does not use a {role} model; remove it")
            )
    for role, model in present.items():
        trained = role in TRAINED_ROLES[algo]
        if trained and model.dtype == "float16":
            # Mixed precision trains bf16 safely (fp32 master weights and gradients); fp16
            # would also need loss scaling, which the engine does not do.
            errors.append(
                FieldError(
                    f"spec.models.{role}.dtype",
                    f"the {role} model is trained: float16 training needs loss scaling, which "
                    "is not supported; use bfloat16 (or float32)",
                )
            )
        if model.trainable is not None and model.trainable != trained:
            state = "trained" if trained else "frozen"
            errors.append(
                FieldError(
                    f"spec.models.{role}.trainable",
                    f"the {role} model is {state} in {algo}; "
                    f"trainable must be {str(trained).lower()} or left out",
                )
            )
    return errors


def _architectures(spec: RLHFJobSpec) -> dict[str, ArchitectureConfig]:
    out = {}
    for role, model in spec.models.present().items():
        arch = model.architecture
        if arch is not None and (arch.preset is None) != (arch.config is None):
            out[role] = arch.resolve()
    return out


def _architecture_errors(spec: RLHFJobSpec) -> list[FieldError]:
    errors = []
    archs = _architectures(spec)
    longest = spec.data.max_prompt_length + spec.rollout.max_new_tokens
    for role, arch in archs.items():
        path = f"spec.models.{role}.architecture"
        if arch.head_dim is None and arch.hidden_size % arch.num_attention_heads:
            errors.append(
                FieldError(
                    f"{path}.config.numAttentionHeads",
                    f"hiddenSize {arch.hidden_size} is not divisible by numAttentionHeads {arch.num_attention_heads}; set headDim",
                )
            )
        if arch.num_attention_heads % arch.kv_heads:
            errors.append(
                FieldError(
                    f"{path}.config.numKeyValueHeads",
                    f"numAttentionHeads {arch.num_attention_heads} is not a multiple of numKeyValueHeads {arch.kv_heads}",
                )
            )
        if longest > arch.max_position_embeddings:
            errors.append(
                FieldError(
                    path,
                    f"maxPromptLength + maxNewTokens = {longest} exceeds the {role} model's "
                    f"maxPositionEmbeddings {arch.max_position_embeddings}",
                )
            )
    actor = archs.get("actor")
    for role, arch in archs.items():
        if actor is not None and role != "actor" and arch.vocab_size != actor.vocab_size:
            errors.append(
                FieldError(
                    f"spec.models.{role}.architecture",
                    f"vocabulary size {arch.vocab_size} differs from the actor's {actor.vocab_size}; "
                    "every model must share the actor's tokenizer",
                )
            )
    ref = spec.models.ref
    if ref is not None and actor is not None and "ref" in archs and archs["ref"] != actor:
        errors.append(
            FieldError(
                "spec.models.ref.architecture",
                "the reference model must have the actor's architecture",
            )
        )
    return errors


# --- batches and data -----------------------------------------------------------


def _batch_errors(spec: RLHFJobSpec) -> list[FieldError]:
    errors = []
    group = spec.algorithm.group_size
    asked = spec.rollout.samples_per_prompt
    if group is not None and asked is not None and asked != group:
        errors.append(
            FieldError(
                "spec.rollout.samplesPerPrompt",
                f"{asked} differs from the {spec.algorithm.name} groupSize {group}; leave it out or make them equal",
            )
        )
    samples = spec.data.batch_size * spec.samples_per_prompt
    minibatches = spec.training.minibatches
    if samples % minibatches:
        errors.append(
            FieldError(
                "spec.training.minibatches",
                f"the iteration's {samples} samples (batchSize x samples per prompt) "
                f"do not split into {minibatches} equal minibatches",
            )
        )
    return errors


def _data_errors(spec: RLHFJobSpec) -> list[FieldError]:
    prompts = spec.data.prompts
    if prompts.format is None and not prompts.path.lower().endswith(
        (".jsonl", ".json", ".parquet")
    ):
        return [
            FieldError(
                "spec.data.prompts.format",
                f"cannot tell the format of {prompts.path!r} from its name; set jsonl or parquet",
            )
        ]
    return []


# --- manual placement -------------------------------------------------------------


def _is_power_of_two(n: int) -> bool:
    return n > 0 and n & (n - 1) == 0


def mesh_devices(text: str, nodes: int, per_node: int) -> list[tuple[int, int]] | str:
    """The (node, device) pairs of a mesh string, or a message saying what is wrong."""
    parsed = parse_mesh(text)
    if parsed is None:
        return "not a mesh (write N, N-M or N:A-B)"
    n0, n1, g0, g1 = parsed
    if n1 < n0:
        return f"node range {n0}-{n1} is reversed"
    if n1 >= nodes:
        return f"node {n1} does not exist (the job has {nodes} node(s), numbered from 0)"
    if g1 == -1:  # whole nodes
        return [(n, g) for n in range(n0, n1 + 1) for g in range(per_node)]
    if n1 != n0:
        return "a device range must be inside one node"
    if g1 < g0:
        return f"device range {g0}-{g1} is reversed"
    if g1 >= per_node:
        return f"device {g1} does not exist (each node has {per_node}, numbered from 0)"
    size = g1 - g0 + 1
    if not _is_power_of_two(size) or g0 % size:
        return (
            f"devices {g0}-{g1} are not an aligned power-of-two block "
            "(1, 2, 4 or 8 devices starting at a multiple of the size)"
        )
    return [(n0, g) for g in range(g0, g1 + 1)]


def _placement_errors(spec: RLHFJobSpec) -> list[FieldError]:
    placement = spec.placement
    if placement.strategy != "manual" or not placement.calls:
        return []
    calls = {c.name: c for c in calls_for(spec.algorithm.name, set(spec.models.present()))}
    errors = []
    for missing in sorted(set(calls) - set(placement.calls)):
        errors.append(FieldError("spec.placement.calls", f"no placement for call {missing}"))
    for extra in sorted(set(placement.calls) - set(calls)):
        errors.append(
            FieldError(
                f"spec.placement.calls.{extra}",
                f"{spec.algorithm.name} has no call {extra} (its calls: {', '.join(calls)})",
            )
        )
    if spec.device_count == 0:
        return errors  # no devices: already reported under spec.resources
    # gpus is at most gpusPerNode or a multiple of it, so every node has `per_node`.
    per_node = min(spec.devices_per_node, spec.device_count)
    nodes = max(1, spec.device_count // per_node)
    archs = _architectures(spec)
    meshes: dict[str, set[tuple[int, int]]] = {}
    for name, cp in placement.calls.items():
        if name not in calls:
            continue
        path = f"spec.placement.calls.{name}"
        devices = mesh_devices(cp.mesh, nodes, per_node)
        if isinstance(devices, str):
            errors.append(FieldError(f"{path}.mesh", f"{cp.mesh!r}: {devices}"))
            continue
        meshes[name] = set(devices)
        errors += _layout_errors(
            spec, path, cp, len(devices), calls[name].kind, archs.get(calls[name].role)
        )
    names = sorted(meshes)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            shared = meshes[a] & meshes[b]
            if shared and shared != meshes[a] and shared != meshes[b]:
                errors.append(
                    FieldError(
                        f"spec.placement.calls.{b}.mesh",
                        f"mesh {placement.calls[b].mesh!r} partly overlaps {a}'s mesh "
                        f"{placement.calls[a].mesh!r}; meshes must be disjoint or nested",
                    )
                )
    return errors


def _layout_errors(
    spec: RLHFJobSpec,
    path: str,
    cp: CallPlacement,
    size: int,
    kind: str,
    arch: ArchitectureConfig | None,
) -> list[FieldError]:
    errors = []
    if cp.dp * cp.tp * cp.pp != size:
        errors.append(
            FieldError(
                path,
                f"dp*tp*pp = {cp.dp}*{cp.tp}*{cp.pp} = {cp.dp * cp.tp * cp.pp} "
                f"but mesh {cp.mesh!r} has {size} devices",
            )
        )
    if cp.tp > spec.devices_per_node or spec.devices_per_node % cp.tp:
        errors.append(
            FieldError(
                f"{path}.tp",
                f"tp {cp.tp} must divide the devices per node "
                f"({spec.devices_per_node}): a tensor-parallel group stays in one node",
            )
        )
    if arch is not None:
        if arch.num_attention_heads % cp.tp or arch.kv_heads % cp.tp:
            errors.append(
                FieldError(
                    f"{path}.tp",
                    f"tp {cp.tp} must divide the attention heads ({arch.num_attention_heads}) "
                    f"and key/value heads ({arch.kv_heads})",
                )
            )
        if cp.pp > arch.num_hidden_layers:
            errors.append(
                FieldError(
                    f"{path}.pp", f"pp {cp.pp} exceeds the model's {arch.num_hidden_layers} layers"
                )
            )
    samples = spec.data.batch_size * spec.samples_per_prompt
    if kind == "train":
        batch = samples // spec.training.minibatches
        what = "each minibatch's"
    else:
        batch = samples
        what = "the iteration's"
    if batch % (cp.dp * cp.micro_batches):
        errors.append(
            FieldError(
                path,
                f"{what} {batch} samples do not split over dp {cp.dp} x microBatches {cp.micro_batches}",
            )
        )
    return errors
