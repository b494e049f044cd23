"""`rlhfctl profile` measures the local CPU into a profile the planner reads."""

from __future__ import annotations

import pytest

from rlhf_operator.cli.main import main
from rlhf_operator.planner.profiles import read_profile


@pytest.mark.slow
def test_profile_writes_a_readable_cpu_profile(tmp_path, repo_root):
    pytest.importorskip("torch")
    out = tmp_path / "mycpu.yaml"
    assert (
        main(["profile", "--device", "cpu", "--quick", "--name", "mycpu", "--out", str(out)]) == 0
    )
    prof = read_profile(out)
    assert prof.name == "mycpu" and prof.kind == "cpu"
    assert 0 < prof.matmul_efficiency <= 1
    assert prof.measured["layer"]["forward_seconds"] > 0
    assert main(["plan", str(repo_root / "examples/tiny-ppo.yaml"), "--gpu-type", str(out)]) == 0
