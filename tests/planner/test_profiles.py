from __future__ import annotations

import pytest

from rlhf_operator.planner.profiles import (
    ProfileError,
    available_profiles,
    load_profile,
    profile_from_dict,
)


def test_shipped_profiles_load():
    names = available_profiles()
    for name in ("H100", "H200", "A100-80GB", "L40S", "cpu"):
        assert name in names
        prof = load_profile(name)
        assert prof.peak_flops > 0 and prof.memory_bytes > 0
        assert prof.usable_memory < prof.memory_bytes
        assert set(prof.generation) >= {"torch", "vllm"}


def test_lookup_is_case_insensitive_and_vllm_decodes_faster():
    prof = load_profile("h100")
    assert prof.name == "H100"
    torch_b, vllm_b = prof.backend("torch"), prof.backend("vllm")
    assert vllm_b.step_overhead_per_layer < torch_b.step_overhead_per_layer
    assert vllm_b.bandwidth_efficiency > torch_b.bandwidth_efficiency


def test_cpu_profile_was_measured():
    prof = load_profile("cpu")
    assert prof.kind == "cpu"
    assert prof.measured.get("gemm_flops_by_rows")


def test_unknown_profile_names_the_known_ones():
    with pytest.raises(ProfileError, match="H100"):
        load_profile("B300-unknown")


def test_bad_profile_fields_are_named(tmp_path, monkeypatch):
    data = load_profile("H100").to_dict()
    data["peak_flops"] = -1
    with pytest.raises(ProfileError, match="peak_flops"):
        profile_from_dict(data, "x.yaml")
    del data["peak_flops"]
    with pytest.raises(ProfileError, match="missing field peak_flops"):
        profile_from_dict(data, "x.yaml")


def test_profiles_dir_from_environment(tmp_path, monkeypatch):
    import yaml

    data = load_profile("H100").to_dict()
    data["name"] = "MyGPU"
    (tmp_path / "MyGPU.yaml").write_text(yaml.safe_dump(data))
    monkeypatch.setenv("RLHF_PROFILES", str(tmp_path))
    assert load_profile("mygpu").name == "MyGPU"
    assert load_profile(str(tmp_path / "MyGPU.yaml")).name == "MyGPU"
