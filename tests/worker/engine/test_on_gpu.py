"""The engines and a role's copies on a CUDA device, against the CPU reference.

Skipped without a GPU; ``make test-gpu`` runs them with the engine and reallocation
suites. One GPU allows single-process checks (NCCL cannot put two ranks on one
device): the forward passes, a training step and generation of the tiny actor and
critic on the GPU match the single-process CPU reference (float32, TF32 off); a
copy made by reallocation on the GPU (new shards on the device, filled by the
plan's local copies, in an NCCL process group) holds exactly the home shards in
their memory order; offloading it to host memory and back restores it exactly.
Messages between ranks over NCCL need two GPUs or more.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from rlhf_operator.contract.sharding import Layout
from rlhf_worker.model import load_shards
from rlhf_worker.realloc.copies import offload_tensors, restore_tensors
from rlhf_worker.realloc.execute import reallocate
from rlhf_worker.realloc.plan import plan_reallocation
from tests.worker.distributed import free_port
from tests.worker.engine.test_layouts import TOL, check_layout, compute_reference, too_far

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
CUDA = torch.device("cuda", 0)


@pytest.fixture
def float32_matmuls() -> Iterator[None]:
    """TF32 off, so that a GPU matmul rounds like the CPU reference's."""
    before = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32 = before


@pytest.fixture
def nccl_world_of_one() -> Iterator[None]:
    dist.init_process_group(
        "nccl",
        init_method=f"tcp://127.0.0.1:{free_port()}",
        rank=0,
        world_size=1,
        timeout=timedelta(seconds=60),
        device_id=CUDA,
    )
    yield
    dist.destroy_process_group()


def test_engines_on_the_gpu_match_the_cpu_reference(
    tiny_lm_dir: Path, tiny_value_dir: Path, float32_matmuls: None
) -> None:
    ref = compute_reference(tiny_lm_dir, tiny_value_dir)
    diffs = check_layout(0, Layout((0,)), ref, tiny_lm_dir, tiny_value_dir, device=CUDA)
    # Reductions run in another order on the GPU: a few float32 ulps more than across ranks.
    assert not too_far(diffs, 10 * TOL), diffs


def test_a_reallocated_copy_on_the_gpu_is_exact_and_offloading_restores_it(
    tiny_lm_dir: Path, nccl_world_of_one: None
) -> None:
    home_layout = Layout((0,))
    config, shards = load_shards(tiny_lm_dir, home_layout, 0)
    home = {name: t.to(CUDA) for name, t in shards.items()}
    plan = plan_reallocation(config.shape, home_layout, home_layout, 1)
    # Not aliased (as a transient copy of the same layout would be): new shards on the
    # device, filled by the plan's local copies.
    copy = reallocate(plan, home, 0, dtype=torch.float32, device=CUDA)
    assert copy is not None and set(copy) == set(home)
    for name, tensor in copy.items():
        assert tensor.device == CUDA and tensor.stride() == home[name].stride(), name
        assert tensor.data_ptr() != home[name].data_ptr(), name
        assert torch.equal(tensor, home[name]), name
    host = offload_tensors(copy)
    assert all(t.numel() == 0 for t in copy.values())
    restore_tensors(copy, host, CUDA)
    for name, tensor in copy.items():
        assert torch.equal(tensor, home[name]) and tensor.stride() == home[name].stride(), name


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_a_training_step_on_the_gpu_holds_what_the_estimator_says(
    tiny_lm_dir: Path, dtype: torch.dtype
) -> None:
    """``max_memory_allocated`` of a step against the planner's estimate (as on CPU)."""
    from rlhf_operator.planner.estimator import Strategy
    from rlhf_worker.engine import OptimizerConfig, Trainer
    from rlhf_worker.model import Decoder
    from rlhf_worker.parallel.groups import single_process_context
    from rlhf_worker.runtime.memory import measure_peak
    from tests.worker.engine.test_memory import batch, estimated, loss

    config, shards = load_shards(tiny_lm_dir, Layout((0,)), 0, dtype=dtype)
    model = Decoder(config, single_process_context(), {k: v.to(CUDA) for k, v in shards.items()})
    trainer = Trainer(model, OptimizerConfig())
    data = {k: v.to(CUDA) for k, v in batch().items()}
    trainer.step(data, loss)
    cost = estimated(tiny_lm_dir, dtype, Strategy(1, 1, 1, 1))
    held = torch.cuda.memory_allocated(CUDA)  # this model and state, and what other tests left
    with measure_peak(CUDA) as peak:
        trainer.step(data, loss)
    ratio = (peak.peak - held) / cost.active_bytes  # what the step allocates on top
    print(
        f"{dtype}: max_memory_allocated {peak.peak / 2**20:.1f} MiB, held before "
        f"{held / 2**20:.1f}, step {(peak.peak - held) / 2**20:.1f} against "
        f"{cost.active_bytes / 2**20:.1f} estimated: ratio {ratio:.3f}"
    )
    assert 0.85 <= ratio <= 1.15, ratio
