"""Rollout in a vLLM engine inside the generation workers (``rollout.backend: vllm``).

* ``weights``: the generation layout's shards as Hugging Face named tensors, in
  buckets (torch only, no vLLM import).
* ``extension``: the worker extension vLLM loads into its own worker process;
  ``collective_rpc`` calls it to load a bucket into the running model.
* ``engine``: one ``vllm.LLM`` per process, started from the actor's model
  directory, generating from token ids and taking new weights in place.
* ``backend``: the ``actor_gen`` call on this backend (used by
  ``runtime.calls``).

vLLM is imported only when a vLLM engine is started, so the worker package
imports without it.
"""
