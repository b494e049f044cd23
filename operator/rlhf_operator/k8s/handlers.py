"""The kopf handlers: thin wrappers that gather what `reconcile` looks at (the
job, its pods and the nodes, from kopf's watch-fed indexes) and run it.

Handlers are registered into a registry by `register()` (not at import), so
that a test or the benchmark can run an operator with its own settings.
Every entry point runs the same level-based `reconcile`:
- on.create / on.resume / on.update(spec): at once when a job appears or
  changes, or when the operator starts; a wait (not enough GPUs, old pods
  still terminating) raises kopf.TemporaryError(delay=...) so kopf retries;
- a timer every `resync_seconds`: pod phases, deadlines, TTL, and node
  changes reach the job even without an event on the job itself.
One lock per job keeps the two from interleaving inside this process.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import kopf

from ..api import GROUP, PLURAL, VERSION
from . import metrics, names
from .admission import Admissions, Decision, GpuPod, QueueEntry, gpu_pod, queue_entry
from .config import OperatorConfig
from .inventory import NodeGPUs, node_gpus
from .kube import Kube
from .pods import PodView, pod_view
from .reconcile import Result, reconcile
from .status import now_utc, parse_time

log = logging.getLogger(__name__)

_locks: dict[str, threading.Lock] = {}
_locks_guard = threading.Lock()


def _job_lock(uid: str) -> threading.Lock:
    with _locks_guard:
        return _locks.setdefault(uid, threading.Lock())


def register(registry: kopf.OperatorRegistry, config: OperatorConfig, kube: Kube) -> None:
    """Register the operator's handlers into `registry`."""
    resource = (GROUP, VERSION, PLURAL)

    @kopf.index("pods", id="job_pods", labels={names.MANAGED_BY: names.MANAGER}, registry=registry)
    def job_pods(namespace: str | None, labels: Any, body: Any, **_: Any) -> dict[Any, PodView]:
        job = labels.get(names.LABEL_JOB)
        return {(namespace, job): pod_view(dict(body))} if job else {}

    @kopf.index("nodes", id="gpu_nodes", registry=registry)
    def gpu_nodes(body: Any, **_: Any) -> dict[Any, NodeGPUs]:
        return {None: node_gpus(dict(body))}

    # Admission's view of the cluster: every pod holding GPUs, the jobs it queues, and
    # the PriorityClasses' values (the queue's order).
    @kopf.index("pods", id="gpu_pods", registry=registry)
    def gpu_pods(body: Any, **_: Any) -> dict[Any, GpuPod]:
        pod = gpu_pod(dict(body))
        return {None: pod} if pod is not None else {}

    @kopf.index(*resource, id="job_queue", registry=registry)
    def job_queue(body: Any, **_: Any) -> dict[Any, QueueEntry]:
        entry = queue_entry(dict(body))
        return {None: entry} if entry is not None else {}

    @kopf.index("scheduling.k8s.io", "v1", "priorityclasses", id="priorities", registry=registry)
    def priorities(name: str, body: Any, **_: Any) -> dict[Any, int]:
        return {name: int(dict(body).get("value") or 0)}

    admissions = Admissions()

    def run(
        body: Any,
        memo: Any,
        job_pods: Any,
        gpu_nodes: Any,
        gpu_pods: Any,
        job_queue: Any,
        priorities: Any,
        **_: Any,
    ) -> Result:
        raw = {k: v for k, v in dict(body).items()}
        meta = raw.get("metadata") or {}
        key = (meta.get("namespace"), meta.get("name"))
        pods = list(job_pods.get(key, []))
        nodes = list(gpu_nodes.get(None, []))
        if "created_at" not in memo:
            memo["created_at"] = parse_time(meta.get("creationTimestamp"))

        def emit(type_: str, reason: str, message: str) -> None:
            kopf.event(body, type=type_, reason=reason, message=message)

        def admit(entry: QueueEntry) -> Decision:
            values = {name: next(iter(store), 0) for name, store in priorities.items()}
            return admissions.decide(
                entry, nodes, list(gpu_pods.get(None, [])), list(job_queue.get(None, [])), values
            )

        t0 = time.monotonic()
        outcome = "error"
        try:
            with _job_lock(str(meta.get("uid"))):
                result = reconcile(raw, pods, nodes, kube, config, memo, emit, now_utc(), admit)
            outcome = result.outcome
            return result
        finally:
            metrics.RECONCILES.labels(result=outcome).inc()
            metrics.RECONCILE_SECONDS.labels(result=outcome).observe(time.monotonic() - t0)

    @kopf.on.resume(*resource, id="job", registry=registry, backoff=config.retry_seconds)
    @kopf.on.create(*resource, id="job", registry=registry, backoff=config.retry_seconds)
    @kopf.on.update(
        *resource, id="job", field="spec", registry=registry, backoff=config.retry_seconds
    )
    def job_changed(**kwargs: Any) -> None:
        result = run(**kwargs)
        if result.outcome == "wait":
            delay = result.delay if result.delay > 0 else config.retry_seconds
            raise kopf.TemporaryError(result.message, delay=min(delay, config.retry_seconds))

    @kopf.timer(
        *resource,
        id="resync",
        interval=config.resync_seconds,
        initial_delay=config.resync_seconds,
        registry=registry,
        backoff=config.retry_seconds,
    )
    def job_resync(**kwargs: Any) -> None:
        run(**kwargs)  # a wait is retried by the next tick

    @kopf.on.delete(*resource, id="forget", registry=registry, optional=True)
    def job_deleted(uid: str, **_: Any) -> None:
        metrics.record_phase(uid, None)
        with _locks_guard:
            _locks.pop(uid, None)

    @kopf.on.login(id="login", registry=registry)
    def login(**_: Any) -> kopf.ConnectionInfo:
        return connection_info(kube)

    @kopf.on.probe(id="jobs", registry=registry)
    def jobs_probe(**_: Any) -> int:
        return metrics.job_count()


def connection_info(kube: Kube) -> kopf.ConnectionInfo:
    """kopf's connection from the same credentials as the operator's own client."""
    c = kube.configuration
    if c.refresh_api_key_hook is not None:
        c.refresh_api_key_hook(c)  # in-cluster: the projected token rotates
    auth = (c.api_key or {}).get("authorization") or (c.api_key or {}).get("BearerToken") or ""
    scheme, _, token = auth.partition(" ") if " " in auth else ("Bearer", "", auth)
    return kopf.ConnectionInfo(
        server=c.host,
        ca_path=c.ssl_ca_cert,
        insecure=not c.verify_ssl,
        scheme=scheme if token else None,
        token=token or None,
        certificate_path=c.cert_file,
        private_key_path=c.key_file,
    )
