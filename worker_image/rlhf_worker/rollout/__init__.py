"""Rollout in a vLLM engine inside the generation workers (``rollout.backend: vllm``).

* ``weights``: the generation layout's shards as Hugging Face named tensors, in
  buckets (torch only, no vLLM import).
* ``extension``: the worker extension vLLM loads into its own worker process;
  ``collective_rpc`` calls it to load a bucket into the running model.
* ``engine``: one ``vllm.LLM`` per process, started from the actor's model
  directory, generating from token ids and taking new weights in place.
The generation call on this backend is the runtime's (``runtime.generate``,
beside the torch generator); nothing here knows the runtime. vLLM is imported
only when a vLLM engine is started, so the worker package imports without it.
"""
