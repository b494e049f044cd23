"""rlhf_worker: what runs in the worker pods (one process per GPU, or per CPU slot
in local mode). Never imports kopf or kubernetes."""

__version__ = "0.1.0"
