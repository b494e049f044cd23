"""The contract between the operator side and the workers: torch-free types and pure math.

Both sides import it (with the ``api`` and the wire in ``controlplane``); it imports
nothing from the planner, the coordinator, the Kubernetes code or the CLI, and
nothing from ``rlhf_worker`` (``tests/test_package_boundaries.py`` holds both rules):

- ``sharding``: the model shape (derived from the API's architecture), the layout
  of a role on ranks, pipeline stage assignment, and which slice each rank holds;
- ``plan``: the execution plan the planner makes and everyone runs, and the
  layouts of its calls and of each role's home;
- ``launch``: how a worker process is started: its command and its settings as
  environment variables, written and read by the same type;
- ``checkpoints``: the checkpoint directory, its manifest and commit marker, and
  finding and pruning complete checkpoints (the workers write the tensors).
"""
