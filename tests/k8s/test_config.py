"""The operator's own settings: a bad one is named at start, before any pod is built."""

from __future__ import annotations

import pytest

from rlhf_operator.cli.main import main
from rlhf_operator.k8s.config import OperatorConfig


def test_a_log_level_no_pod_could_start_with_is_refused_at_once() -> None:
    assert OperatorConfig.from_env({"RLHF_OPERATOR_LOG_LEVEL": "critical"}).log_level == "CRITICAL"
    with pytest.raises(ValueError, match="RLHF_OPERATOR_LOG_LEVEL='LOUD' must be one of DEBUG"):
        OperatorConfig.from_env({"RLHF_OPERATOR_LOG_LEVEL": "loud"})


def test_rlhfctl_operator_says_which_setting_is_wrong(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("RLHF_OPERATOR_LOG_LEVEL", "verbose")
    assert main(["operator"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("rlhfctl operator: RLHF_OPERATOR_LOG_LEVEL='VERBOSE' must be one of")
    assert "Traceback" not in err
