"""A Kubernetes cluster for tests: the emulator (in its own thread), the real
operator (kopf, in another thread), a fake kubelet that moves pods through
their phases, and helpers to read and change objects over HTTP.

Nodes are plain Node objects with `status.allocatable["nvidia.com/gpu"]`;
nothing schedules pods onto them (the emulator has no scheduler): the fake
kubelet marks every new pod Running, and tests mark pods Failed or Succeeded
to play what a real kubelet would report.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from kubernetes.client.exceptions import ApiException

from rlhf_operator.api import GROUP, PLURAL, VERSION
from rlhf_operator.k8s.config import OperatorConfig
from rlhf_operator.k8s.inventory import node_gpus
from rlhf_operator.k8s.kube import Kube
from rlhf_operator.k8s.pods import pod_gpus
from rlhf_operator.k8s.run import operate, settings_for
from rlhf_operator.k8s.status import iso, now_utc

from .emulator import EmulatorThread

JOBS = f"/apis/{GROUP}/{VERSION}"
TEST_USER_AGENT = "rlhf-tests"
NAMESPACE = "default"

TEST_CONFIG = OperatorConfig(
    coordinator_image="rlhf-operator:test",
    worker_image="rlhf-worker:test",
    metrics_port=0,
    health_port=0,
    resync_seconds=0.3,
    retry_seconds=0.5,
    failure_settle_seconds=2.0,  # a gang of local processes ends well within this
)


def write_kubeconfig(path: Path, url: str) -> Path:
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "emulator", "cluster": {"server": url}}],
                "users": [{"name": "test", "user": {"token": "test-token"}}],
                "contexts": [
                    {"name": "emulator", "context": {"cluster": "emulator", "user": "test"}}
                ],
                "current-context": "emulator",
            }
        )
    )
    return path


def wait_for(predicate: Callable[[], Any], what: str, timeout: float = 60.0) -> Any:
    """Poll until predicate() is truthy; a hang guard, not a speed assertion."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def event_named(cluster: Cluster, reason: str) -> dict[str, Any]:
    """The first event with this reason, waiting for it: kopf posts events on its own
    schedule, after the status patch the test may have waited for."""
    found = wait_for(
        lambda: [e for e in cluster.events() if e.get("reason") == reason], f"a {reason} event"
    )
    return dict(found[0])


class OperatorThread:
    """The real operator (`k8s.run.operate`) in a thread with its own loop."""

    def __init__(self, config: OperatorConfig, kubeconfig: Path) -> None:
        self.config = config
        self.kubeconfig = kubeconfig
        self.stop_flag = threading.Event()
        self.ready_flag = threading.Event()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="operator", daemon=True)

    def _run(self) -> None:
        settings = settings_for(self.config)
        settings.watching.server_timeout = 30
        settings.watching.client_timeout = 35
        settings.posting.level = 100  # no events for kopf's log lines in tests
        try:
            asyncio.run(
                operate(
                    self.config,
                    str(self.kubeconfig),
                    stop_flag=self.stop_flag,
                    ready_flag=self.ready_flag,
                    settings=settings,
                )
            )
        except BaseException as exc:  # reported by stop()
            self.error = exc

    def start(self) -> OperatorThread:
        self.thread.start()
        wait_for(lambda: self.ready_flag.is_set() or self.error, "the operator to start")
        return self

    def stop(self) -> None:
        self.stop_flag.set()
        self.thread.join(30)
        assert not self.thread.is_alive(), "the operator did not stop"


class Cluster:
    """Test-side access to the emulator: the same HTTP API the operator uses."""

    def __init__(self, emulator: EmulatorThread, kubeconfig: Path) -> None:
        self.emulator = emulator
        self.kubeconfig = kubeconfig
        self.kube = Kube.from_kubeconfig(str(kubeconfig))
        # Tells the tests' own requests apart from the operator's in the emulator's log.
        self.kube.api.user_agent = TEST_USER_AGENT

    # --- generic --------------------------------------------------------
    def get(self, path: str) -> dict[str, Any] | None:
        try:
            return dict(self.kube.call("GET", path))
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def items(self, path: str) -> list[dict[str, Any]]:
        return list((self.kube.call("GET", path) or {}).get("items") or [])

    # --- jobs -----------------------------------------------------------
    def apply_job(self, manifest: dict[str, Any], namespace: str = NAMESPACE) -> None:
        manifest = {**manifest, "metadata": {**manifest["metadata"], "namespace": namespace}}
        self.kube.call("POST", f"{JOBS}/namespaces/{namespace}/{PLURAL}", manifest)

    def job(self, name: str, namespace: str = NAMESPACE) -> dict[str, Any] | None:
        return self.get(f"{JOBS}/namespaces/{namespace}/{PLURAL}/{name}")

    def status(self, name: str, namespace: str = NAMESPACE) -> dict[str, Any]:
        return dict((self.job(name, namespace) or {}).get("status") or {})

    def condition(self, name: str, type_: str) -> dict[str, Any] | None:
        for c in self.status(name).get("conditions") or []:
            if c["type"] == type_:
                return dict(c)
        return None

    def patch_job(self, name: str, patch: dict[str, Any], namespace: str = NAMESPACE) -> None:
        self.kube.call(
            "PATCH",
            f"{JOBS}/namespaces/{namespace}/{PLURAL}/{name}",
            patch,
            "application/merge-patch+json",
        )

    # --- pods and other children ------------------------------------------
    def pods(self, job: str | None = None, namespace: str = NAMESPACE) -> list[dict[str, Any]]:
        # The emulator ignores label selectors: filter here.
        pods = self.items(f"/api/v1/namespaces/{namespace}/pods")
        if job is not None:
            pods = [
                p for p in pods if (p["metadata"].get("labels") or {}).get(f"{GROUP}/job") == job
            ]
        return pods

    def all_pods(self) -> list[dict[str, Any]]:
        """Pods of every namespace (what a kubelet sees)."""
        return self.items("/api/v1/pods")

    def pod_names(self, job: str) -> set[str]:
        return {p["metadata"]["name"] for p in self.pods(job)}

    def set_pod_phase(
        self,
        name: str,
        phase: str,
        exit_code: int | None = None,
        namespace: str = NAMESPACE,
        message: str = "",
    ) -> None:
        status: dict[str, Any] = {"phase": phase}
        if exit_code is not None:
            status["containerStatuses"] = [
                {
                    "name": "main",
                    "state": {
                        "terminated": {
                            "exitCode": exit_code,
                            "reason": "Error",
                            "finishedAt": iso(now_utc()),
                            **({"message": message} if message else {}),
                        }
                    },
                }
            ]
        self.kube.call(
            "PATCH",
            f"/api/v1/namespaces/{namespace}/pods/{name}/status",
            {"status": status},
            "application/merge-patch+json",
        )

    def events(self, namespace: str = NAMESPACE) -> list[dict[str, Any]]:
        return self.items(f"/api/v1/namespaces/{namespace}/events")

    def add_gpu_node(
        self, name: str, gpus: int, product: str = "NVIDIA-H100-80GB-HBM3", **extra: Any
    ) -> None:
        node = {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {"name": name, "labels": {"nvidia.com/gpu.product": product}},
            "status": {
                "allocatable": {"nvidia.com/gpu": str(gpus), "cpu": "64"},
                "capacity": {"nvidia.com/gpu": str(gpus), "cpu": "64"},
            },
        }
        for key, value in extra.items():
            node[key] = value
        self.kube.call("POST", "/api/v1/nodes", node)


KUEUE_QUEUE = "kueue.x-k8s.io/queue-name"
KUEUE_GROUP = "kueue.x-k8s.io/pod-group-name"
KUEUE_MANAGED = "kueue.x-k8s.io/managed"


class FakeKubelet:
    """Plays the scheduler and the kubelets: binds each new pod that requests GPUs to
    the first node with that many free (allocatable less the GPUs of the pods bound
    there), or leaves it Pending as Unschedulable until one has; then marks it Running.

    With `kueue=True` it also plays Kueue's pod integration: a pod with a queue label
    is taken in (the managed label and finalizer its webhook adds) and stays Pending,
    SchedulingGated, until the test admits its group (`admit`); `preempt` stops a
    group as Kueue does (TerminationTarget, then the pods fail), and the finalizer of
    a pod that ended is removed once its group is finished (a pod marked
    retriable-in-group: false)."""

    def __init__(self, cluster: Cluster, kueue: bool = False) -> None:
        self.kueue = kueue
        self.admitted: set[str] = set()
        self.cluster = cluster
        self.stop_flag = threading.Event()
        self.paused = threading.Event()
        self.thread = threading.Thread(target=self._run, name="kubelet", daemon=True)
        self._pool = concurrent.futures.ThreadPoolExecutor(4, thread_name_prefix="kubelet")

    def _run(self) -> None:
        while not self.stop_flag.wait(0.05):
            if self.paused.is_set():
                continue
            try:
                pods = self.cluster.all_pods()
                if self.kueue:
                    pods = [p for p in pods if self._kueue(p)]
                new = [
                    p
                    for p in pods
                    if (p.get("status") or {}).get("phase") in (None, "Pending")
                    and not p["metadata"].get("deletionTimestamp")
                ]
                placed = [p["metadata"] for p in new if self._bind(p, pods)]
            except ApiException:
                continue
            list(self._pool.map(self._start, placed))

    def _kueue(self, pod: dict[str, Any]) -> bool:
        """Kueue's part in one pass; False for a pod it holds back (gated)."""
        meta = pod["metadata"]
        labels = meta.get("labels") or {}
        group = labels.get(KUEUE_GROUP)
        if not labels.get(KUEUE_QUEUE) or group is None:
            return True
        path = f"/api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}"
        merge = "application/merge-patch+json"
        with contextlib.suppress(ApiException):
            if labels.get(KUEUE_MANAGED) != "true":
                taken = {"labels": {KUEUE_MANAGED: "true"}, "finalizers": [KUEUE_MANAGED]}
                self.cluster.kube.call("PATCH", path, {"metadata": taken}, merge)
            phase = (pod.get("status") or {}).get("phase")
            finished = (meta.get("annotations") or {}).get("kueue.x-k8s.io/retriable-in-group")
            if meta.get("deletionTimestamp") and (phase in ("Succeeded", "Failed") or finished):
                self.cluster.kube.call("PATCH", path, {"metadata": {"finalizers": None}}, merge)
                return False
            if group not in self.admitted and phase in (None, "Pending"):
                gated = {"type": "PodScheduled", "status": "False", "reason": "SchedulingGated"}
                if not any(c.get("reason") == "SchedulingGated" for c in _conditions(pod)):
                    status = {"phase": "Pending", "conditions": [gated]}
                    self.cluster.kube.call("PATCH", f"{path}/status", {"status": status}, merge)
                return False
        return True

    def admit(self, group: str) -> None:
        self.admitted.add(group)

    def preempt(self, group: str, namespace: str = "default") -> None:
        """Kueue stops an admitted group: TerminationTarget on each pod, which then fails."""
        self.admitted.discard(group)
        merge = "application/merge-patch+json"
        for pod in self.cluster.pods(namespace=namespace):
            meta = pod["metadata"]
            if (meta.get("labels") or {}).get(KUEUE_GROUP) != group:
                continue
            condition = {
                "type": "TerminationTarget",
                "status": "True",
                "reason": "Preempted",
                "message": "Preempted to accommodate a workload of higher priority",
            }
            status = {"phase": "Failed", "conditions": [condition]}
            path = f"/api/v1/namespaces/{namespace}/pods/{meta['name']}/status"
            self.cluster.kube.call("PATCH", path, {"status": status}, merge)

    def _bind(self, pod: dict[str, Any], pods: list[dict[str, Any]]) -> bool:
        gpus = pod_gpus(pod)
        if gpus == 0 or (pod.get("spec") or {}).get("nodeName"):
            return True
        nodes = [node_gpus(n) for n in self.cluster.items("/api/v1/nodes")]
        free = {n.name: n.gpus for n in nodes if n.ready and n.schedulable}
        for p in pods:
            node = (p.get("spec") or {}).get("nodeName")
            if node in free and (p.get("status") or {}).get("phase") not in ("Succeeded", "Failed"):
                free[node] -= pod_gpus(p)
        meta = pod["metadata"]
        path = f"/api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}"
        merge = "application/merge-patch+json"
        node = next((n for n, left in free.items() if left >= gpus), None)
        if node is None:
            said = (pod.get("status") or {}).get("conditions") or []
            if any(c.get("reason") == "Unschedulable" for c in said):
                return False  # said already; tried again on the next pass
            condition = {
                "type": "PodScheduled",
                "status": "False",
                "reason": "Unschedulable",
                "message": f"0/{len(nodes)} nodes are available: Insufficient nvidia.com/gpu.",
            }
            status = {"phase": "Pending", "conditions": [condition]}
            with contextlib.suppress(ApiException):
                self.cluster.kube.call("PATCH", f"{path}/status", {"status": status}, merge)
            return False
        self.cluster.kube.call("PATCH", path, {"spec": {"nodeName": node}}, merge)
        pod.setdefault("spec", {})["nodeName"] = node  # the next pod of this pass sees it
        return True

    def _start(self, meta: dict[str, Any]) -> None:
        with contextlib.suppress(ApiException):  # deleted between the list and the patch
            self.cluster.set_pod_phase(meta["name"], "Running", namespace=meta["namespace"])

    def start(self) -> FakeKubelet:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.stop_flag.set()
        self.thread.join(10)
        self._pool.shutdown(wait=True)


def _conditions(pod: dict[str, Any]) -> list[dict[str, Any]]:
    return list((pod.get("status") or {}).get("conditions") or [])


def config(**changes: Any) -> OperatorConfig:
    return dataclasses.replace(TEST_CONFIG, **changes)
