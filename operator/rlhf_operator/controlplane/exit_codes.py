"""Exit codes shared by the coordinator, the workers and the operator.

One failed pod restarts the whole gang, and the pods that lose a peer exit
soon after the one that failed. The operator reads these codes to tell the
cause from its consequences, so that the restart's event names the pod that
failed first (`kubectl describe rlhfjob`), not a bystander that happened to
be reported first.
"""

from __future__ import annotations

PEER_LOST = 5
"""This process ended because another part of the job went away: a worker whose
coordinator vanished or ended its session, or a coordinator that lost a worker.
A consequence of another pod's failure, never the cause."""
