"""What the coordinator's API raises. Each message names the rank and what went wrong."""

from __future__ import annotations


class ControlPlaneError(RuntimeError):
    """Base of the coordinator's errors."""


class WorkerLost(ControlPlaneError):
    """A worker stopped answering (missed heartbeats, a broken stream, replaced, never there)."""

    def __init__(self, rank: int, reason: str) -> None:
        super().__init__(f"worker rank {rank} lost: {reason}")
        self.rank = rank
        self.reason = reason


class CommandFailed(ControlPlaneError):
    """A worker's handler raised; `message` is its one-line error."""

    def __init__(self, rank: int, command: str, message: str) -> None:
        super().__init__(f"rank {rank}: {command} failed: {message}")
        self.rank = rank
        self.command = command
        self.message = message


class CommandTimeout(ControlPlaneError):
    """No result within the command's deadline."""

    def __init__(self, rank: int, command: str, seconds: float) -> None:
        super().__init__(f"rank {rank}: {command} got no result within {seconds:g} s")
        self.rank = rank
        self.command = command
        self.seconds = seconds


class WorkersNotReady(ControlPlaneError):
    """Some ranks did not register and connect before the deadline."""

    def __init__(self, job_id: str, waited_s: float, missing: dict[int, str]) -> None:
        detail = "; ".join(f"rank {rank}: {why}" for rank, why in sorted(missing.items()))
        super().__init__(
            f"job {job_id}: {len(missing)} worker(s) not ready after {waited_s:g} s "
            f"(missing ranks {sorted(missing)}): {detail}"
        )
        self.job_id = job_id
        self.missing = missing


class Rejected(ControlPlaneError):
    """A registration, heartbeat or stream the coordinator refuses.

    `code` is the gRPC status name the service answers with (e.g. UNAUTHENTICATED).
    """

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
