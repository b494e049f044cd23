"""rlhf-operator: Kubernetes-native RLHF with per-call parallel layouts.

Sub-packages, one part of the design each:

- ``api``: the ``RLHFJob`` resource as pydantic models (the CRD is generated
  from them), the algorithms' call graphs, and the semantic checks.
- ``cli``: ``rlhfctl``.
"""

__version__ = "0.1.0"
