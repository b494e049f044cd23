"""The gRPC control plane between a job's coordinator and its workers.

- ``v1/control.proto``: the versioned wire contract (package
  ``rlhf.controlplane.v1``) and its checked-in generated stubs;
- ``messages``: commands and reports as plain dataclasses, and their wire form;
- ``tokens``: the per-job token workers present when they register;
- ``exits``: exit codes and the reason a process leaves for the operator (a cause or a consequence);
- ``generate``: regenerates the stubs (``python -m rlhf_operator.controlplane.generate``).

Only small control messages use this channel; bulk tensors move worker to
worker over torch.distributed. Imports neither torch nor kopf, so both the
operator and the worker images use it.
"""
