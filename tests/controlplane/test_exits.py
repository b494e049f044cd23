"""A process's last word: on stderr, and where the kubelet reads it."""

from __future__ import annotations

from rlhf_operator.controlplane import exits


def test_a_failing_process_leaves_its_reason_and_a_clean_exit_does_not(tmp_path, capsys):
    log = tmp_path / "termination-log"
    environ = {exits.TERMINATION_LOG_ENV: str(log)}
    assert exits.ending(0, "done", environ) == 0
    assert not log.exists()
    assert exits.ending(3, "worker: refused\n", environ) == 3
    assert log.read_text() == "worker: refused"
    assert capsys.readouterr().err == "done\nworker: refused\n\n"


def test_the_reason_is_bounded_and_writing_it_never_raises(tmp_path):
    log = tmp_path / "termination-log"
    exits.leave_reason("x" * 10_000, {exits.TERMINATION_LOG_ENV: str(log)})
    assert log.stat().st_size == exits.MAX_REASON_BYTES
    exits.leave_reason("why", {exits.TERMINATION_LOG_ENV: str(tmp_path / "no" / "dir")})
    exits.leave_reason("why", {})  # local mode: nowhere to leave it
