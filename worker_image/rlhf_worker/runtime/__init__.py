"""The worker's side of the main job: the state one worker process keeps across
commands (its roles' shards under each layout, the iteration's data, the job and
the plan) and the command handlers the coordinator drives it with.

- ``state``: ``Runtime``, everything one process holds, and ``prepare`` (job, plan, groups);
- ``models``: model directories (tiny ones built locally), loading a role,
  reallocating it to another layout, releasing transient copies;
- ``rows`` / ``datamove``: which rows of a call's data each rank holds and moving them;
- ``calls``: running a call: inference, reward and training here, generation in
  ``generate`` (on the torch generator or a vLLM engine, side by side);
- ``persist``: checkpoints and the final export (``rank_files``: one rank's files);
- ``handlers``: the command table (``HANDLERS``) the agent dispatches to.
"""
