"""The checked-in gRPC stubs are exactly what the generator makes from control.proto."""

from __future__ import annotations

import filecmp
from pathlib import Path

from rlhf_operator.controlplane import generate


def test_checked_in_stubs_match_a_fresh_generation(tmp_path: Path):
    generate.generate_into(tmp_path)
    fresh = tmp_path / "rlhf_operator" / "controlplane"
    names = generate.generated_names("v1/control.proto")
    assert names == ["v1/control_pb2.py", "v1/control_pb2.pyi", "v1/control_pb2_grpc.py"]
    for name in names:
        assert filecmp.cmp(fresh / name, generate.PACKAGE_DIR / name, shallow=False), (
            f"{name} is stale: run `python -m rlhf_operator.controlplane.generate`"
        )


def test_check_mode_reports_a_stale_stub(tmp_path: Path, monkeypatch):
    # A copy of the package directory with one stub edited: --check must notice.
    copy = tmp_path / "controlplane"
    (copy / "v1").mkdir(parents=True)
    for name in generate.generated_names("v1/control.proto"):
        (copy / name).write_bytes((generate.PACKAGE_DIR / name).read_bytes())
    (copy / "v1/control_pb2_grpc.py").write_text("# edited by hand\n")
    monkeypatch.setattr(generate, "PACKAGE_DIR", copy)
    assert generate.stale_files() == ["v1/control_pb2_grpc.py"]
    assert generate.main(["--check"]) == 1


def test_the_service_is_versioned():
    from rlhf_operator.controlplane.v1 import control_pb2

    service = control_pb2.DESCRIPTOR.services_by_name["Control"]
    assert service.full_name == "rlhf.controlplane.v1.Control"
    assert [method.name for method in service.methods] == ["Register", "Heartbeat", "Session"]
