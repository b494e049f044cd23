"""Running the operator: kopf settings, the metrics server, the registry."""

from __future__ import annotations

import asyncio
import logging
import threading
from typing import Any

import kopf
from prometheus_client import start_http_server

from ..api import GROUP
from .config import OperatorConfig
from .handlers import register
from .kube import Kube


def settings_for(config: OperatorConfig) -> kopf.OperatorSettings:
    settings = kopf.OperatorSettings()
    # kopf's own bookkeeping lives under the project's group, not kopf's.
    settings.persistence.finalizer = f"{GROUP}/finalizer"
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=GROUP, key="last-handled-configuration"
    )
    # Watches end and restart regularly: the known cure for "kopf stops seeing changes".
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    settings.watching.connect_timeout = 30
    settings.networking.request_timeout = 60
    settings.posting.reporting_component = "rlhf-operator"
    settings.posting.level = logging.WARNING  # kopf's own log lines are not events
    settings.peering.standalone = True  # one replica, Recreate: no peering objects needed
    settings.execution.max_workers = 16
    # No runtime scanning of CRDs and namespaces: the chart installs the CRD before
    # the operator starts and names the namespaces, so the operator needs no RBAC
    # on customresourcedefinitions or namespaces.
    settings.scanning.disabled = True
    return settings


async def operate(
    config: OperatorConfig,
    kubeconfig: str | None = None,
    stop_flag: threading.Event | asyncio.Event | None = None,
    ready_flag: threading.Event | asyncio.Event | None = None,
    settings: kopf.OperatorSettings | None = None,
) -> None:
    """Run the operator until stop_flag is set (or forever)."""
    kube = Kube.from_kubeconfig(kubeconfig)
    registry = kopf.OperatorRegistry()
    register(registry, config, kube)
    liveness = f"http://0.0.0.0:{config.health_port}/healthz" if config.health_port else None
    kwargs: dict[str, Any] = {"clusterwide": True}
    if config.namespaces:
        kwargs = {"namespaces": list(config.namespaces)}
    await kopf.operator(
        registry=registry,
        settings=settings or settings_for(config),
        standalone=True,
        liveness_endpoint=liveness,
        stop_flag=stop_flag,
        ready_flag=ready_flag,
        memo=kopf.Memo(),
        **kwargs,
    )


def main(config: OperatorConfig, kubeconfig: str | None = None) -> int:
    logging.basicConfig(
        level=getattr(logging, config.log_level, logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if config.metrics_port:
        start_http_server(config.metrics_port)
    asyncio.run(operate(config, kubeconfig))
    return 0
