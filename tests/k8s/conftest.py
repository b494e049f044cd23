"""Fixtures of the operator tests: the emulator, the operator, the fake kubelet."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from .cluster import TEST_CONFIG, Cluster, FakeKubelet, OperatorThread, write_kubeconfig
from .emulator import EmulatorThread

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture()
def emulator() -> Iterator[EmulatorThread]:
    thread = EmulatorThread().start()
    yield thread
    thread.stop()


@pytest.fixture()
def cluster(emulator: EmulatorThread, tmp_path: Path) -> Cluster:
    return Cluster(emulator, write_kubeconfig(tmp_path / "kubeconfig", emulator.url))


@pytest.fixture()
def kubelet(cluster: Cluster) -> Iterator[FakeKubelet]:
    k = FakeKubelet(cluster).start()
    yield k
    k.stop()


@pytest.fixture()
def operator(cluster: Cluster) -> Iterator[OperatorThread]:
    op = OperatorThread(TEST_CONFIG, cluster.kubeconfig).start()
    yield op
    op.stop()


def example(name: str) -> dict[str, Any]:
    return copy.deepcopy(yaml.safe_load((ROOT / "examples" / name).read_text()))


def gpu_job(name: str, gpus: int = 2, gpus_per_node: int = 1, **spec: Any) -> dict[str, Any]:
    """The tiny PPO example on GPUs (colocated plan: plans in milliseconds)."""
    job = example("tiny-ppo.yaml")
    job["metadata"] = {"name": name}
    job["spec"]["resources"] = {"gpus": gpus, "gpusPerNode": gpus_per_node, "gpuType": "H100"}
    for key, value in spec.items():
        job["spec"][key] = value
    return job


def local_job(name: str, slots: int = 2, **spec: Any) -> dict[str, Any]:
    job = example("tiny-ppo.yaml")
    job["metadata"] = {"name": name}
    job["spec"]["resources"] = {"local": {"slots": slots}}
    for key, value in spec.items():
        job["spec"][key] = value
    return job


def pytest_configure(config: pytest.Config) -> None:
    # kmock loads its bundled resource list with a deprecated importlib call.
    config.addinivalue_line("filterwarnings", "ignore:read_binary is deprecated:DeprecationWarning")
