"""Methods vLLM adds to its own worker (``LLM(worker_extension_cls=...)``).

``LLM.collective_rpc(name, args)`` runs these in vLLM's worker process, where
``self.model_runner.model`` is the running model. An update is three calls:
``rlhf_begin_update``, ``rlhf_load_bucket`` per bucket, ``rlhf_finish_update``
(prefixed: vLLM's worker already has ``finish_weight_update`` etc. of its own
weight-transfer API, and an extension may not shadow a worker attribute).

Why not plain ``model.load_weights``: on CPU vLLM repacks each linear weight
for its GEMM kernel after loading and drops the original parameter, so a
second ``load_weights`` finds no loader. vLLM's layerwise reload (what its own
``Worker.reload_weights`` uses) restores the checkpoint-format parameters,
buffers what each layer receives, repacks a layer once all of it has arrived
and copies the result into the engine's existing storage. Splitting it over
several calls lets the weights arrive in buckets.
"""

from __future__ import annotations

from typing import Any

import torch

QUALNAME = "rlhf_worker.rollout.extension.WeightUpdateExtension"


class WeightUpdateExtension:
    """Mixed into vLLM's worker class; ``self`` is the worker."""

    model_runner: Any
    vllm_config: Any

    def rlhf_begin_update(self) -> None:
        from vllm.config import set_current_vllm_config
        from vllm.model_executor.model_loader.reload.layerwise import (
            initialize_layerwise_reload,
        )

        with set_current_vllm_config(self.vllm_config):
            initialize_layerwise_reload(self.model_runner.get_model())

    def rlhf_load_bucket(self, named: list[tuple[str, torch.Tensor]]) -> int:
        """Load (Hugging Face name, tensor) pairs; ``load_weights`` maps them onto
        vLLM's fused parameters (qkv_proj, gate_up_proj)."""
        from vllm.config import set_current_vllm_config

        with set_current_vllm_config(self.vllm_config):
            loaded = self.model_runner.get_model().load_weights(weights=iter(named))
        return len(loaded) if loaded is not None else len(named)

    def rlhf_load_bucket_ipc(self, handles: list[tuple[str, Any]]) -> int:
        """`rlhf_load_bucket` of tensors sent as CUDA IPC handles (`engine.ipc_handles`),
        mapped from the sender's memory on this worker's device. vLLM's layerwise reload
        may keep the mapped tensors until its layer is complete (or the update is
        finished) and copy from them then: this is safe because at tp = 1 the bucket's
        tensors are the sender's live compute weights, which outlive the update. A
        bucket of temporaries would have to be cloned here."""
        device = torch.cuda.current_device()
        named = []
        for name, (rebuild, args) in handles:
            args = list(args)
            args[6] = device  # the storage's device, as this process numbers it
            named.append((name, rebuild(*args)))
        count = self.rlhf_load_bucket(named)
        torch.cuda.synchronize()  # the copies made so far are done
        return count

    def rlhf_finish_update(self) -> None:
        from vllm.config import set_current_vllm_config
        from vllm.model_executor.model_loader.reload.layerwise import finalize_layerwise_reload

        with set_current_vllm_config(self.vllm_config):
            finalize_layerwise_reload(self.model_runner.get_model(), self.vllm_config.model_config)

    def rlhf_weight_checksum(self) -> float:
        """Sum of every parameter and buffer of the running model (tests: an update changed it)."""
        model = self.model_runner.get_model()
        total = 0.0
        for tensor in list(model.parameters()) + list(model.buffers()):
            if tensor.is_floating_point():
                total += float(tensor.detach().double().sum())
        return total
