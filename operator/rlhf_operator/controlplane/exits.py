"""How a job's processes end: the exit codes the operator reads, and the
one-line reason each process leaves for it.

One failed pod restarts the whole gang, and the pods that lose a peer exit
soon after the one that failed. The operator reads the exit codes to tell the
cause from its consequences, so that the restart's event names the pod that
failed first (`kubectl describe rlhfjob`), not a bystander that happened to
be reported first.

The restart deletes the failed pods, and their logs with them, so a process
that ends with an error also writes its reason to the container's
termination-message file (`leave_reason`); the kubelet puts it in the pod's
status (or, with the builders' FallbackToLogsOnError, the end of the log when a
process died without leaving one), and the operator copies its last line into
the job's event and condition.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping

PEER_LOST = 5
"""This process ended because another part of the job went away: a worker whose
coordinator vanished or ended its session, or a coordinator that lost a worker.
A consequence of another pod's failure, never the cause."""

TERMINATION_LOG_ENV = "RLHF_TERMINATION_LOG"
"""Names the file to leave the reason in (the pod builders set it to the
container's terminationMessagePath); unset, as in local mode, nothing is written."""
TERMINATION_LOG_PATH = "/dev/termination-log"
"""Kubernetes' default terminationMessagePath."""
MAX_REASON_BYTES = 1024
"""Kept short: the kubelet takes at most 4096 bytes per container, and the
operator puts several pods' reasons into one event."""


def leave_reason(message: str, environ: Mapping[str, str] = os.environ) -> None:
    """Write why this process is ending where the kubelet reads it; never raises
    (the process is already on its way out with a worse problem)."""
    path = environ.get(TERMINATION_LOG_ENV)
    if not path:
        return
    data = message.strip().encode("utf-8", errors="replace")[:MAX_REASON_BYTES]
    try:
        with open(path, "wb") as f:
            f.write(data)
    except OSError:
        pass


def ending(code: int, message: str, environ: Mapping[str, str] = os.environ) -> int:
    """A process's last word: `message` on stderr and, unless `code` is 0, left
    for the kubelet too. Returns `code`, for `return ending(...)`."""
    print(message, file=sys.stderr, flush=True)
    if code != 0:
        leave_reason(message, environ)
    return code
