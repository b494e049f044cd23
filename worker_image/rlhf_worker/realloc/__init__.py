"""Parameter reallocation between a role's parallel layouts, and the copies it makes.

- ``plan``: which slice of which parameter goes from which rank to which (pure, torch-free);
- ``execute``: moves the bytes with torch.distributed, as one rank's program of a plan;
- ``pool``: reused memory for transient copies on CPU;
- ``copies``: a role's residency on one rank: the home copy, transient copies made by
  reallocation, in-place resharding (``house``) and host offload.
"""
