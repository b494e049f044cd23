"""The few API calls the operator makes, over the kubernetes client, with the
answers that are not errors for a level-based controller turned into values:
409 on create means "already there", 404 on delete means "already gone".

Every call goes through `call()` so the operator's RBAC (the chart's Role) can
be read off this module: create configmaps, secrets, services, pods,
serviceaccounts, roles, rolebindings and podgroups; delete pods and rlhfjobs;
patch rlhfjobs/status. Reads come from kopf's watches (indexes), not from here.
"""

from __future__ import annotations

import logging
from typing import Any

import kubernetes
from kubernetes.client.exceptions import ApiException

from ..api import GROUP, PLURAL, VERSION

log = logging.getLogger(__name__)

REQUEST_TIMEOUT = 30.0  # seconds; a hung API call must not hang a handler thread forever

# kind -> (API path prefix, plural) of the objects the operator creates.
KINDS = {
    "ConfigMap": ("/api/v1", "configmaps"),
    "Secret": ("/api/v1", "secrets"),
    "Service": ("/api/v1", "services"),
    "Pod": ("/api/v1", "pods"),
    "ServiceAccount": ("/api/v1", "serviceaccounts"),
    "Role": ("/apis/rbac.authorization.k8s.io/v1", "roles"),
    "RoleBinding": ("/apis/rbac.authorization.k8s.io/v1", "rolebindings"),
    "NetworkPolicy": ("/apis/networking.k8s.io/v1", "networkpolicies"),
    "PodGroup": ("", "podgroups"),  # the group comes from the object's apiVersion
}


_GONE = object()  # what `_unless_gone` answers for a 404
_BACKGROUND = {"propagationPolicy": "Background"}


class Kube:
    """A thin client: one kubernetes ApiClient, JSON in and out."""

    def __init__(self, api: kubernetes.client.ApiClient) -> None:
        self.api = api

    @classmethod
    def from_kubeconfig(cls, kubeconfig: str | None = None) -> Kube:
        """In-cluster credentials when running in a pod, else the kubeconfig."""
        configuration = kubernetes.client.Configuration()
        if kubeconfig is None:
            try:
                kubernetes.config.load_incluster_config(client_configuration=configuration)
                return cls(kubernetes.client.ApiClient(configuration))
            except kubernetes.config.ConfigException:
                pass
        kubernetes.config.load_kube_config(
            config_file=kubeconfig, client_configuration=configuration
        )
        return cls(kubernetes.client.ApiClient(configuration))

    @property
    def configuration(self) -> kubernetes.client.Configuration:
        return self.api.configuration

    def call(
        self,
        method: str,
        path: str,
        body: Any = None,
        content_type: str = "application/json",
    ) -> Any:
        request = self.api.param_serialize(
            method,
            path,
            header_params={"Content-Type": content_type, "Accept": "application/json"},
            body=body,
            auth_settings=["BearerToken"],
        )
        response = self.api.call_api(*request, _request_timeout=REQUEST_TIMEOUT)
        response.read()
        types = {"2XX": "object", "default": "object"}
        return self.api.response_deserialize(response, types).data

    def create(self, obj: dict[str, Any]) -> bool:
        """Create; False when it exists already (409)."""
        prefix, plural = KINDS[obj["kind"]]
        if not prefix:
            prefix = f"/apis/{obj['apiVersion']}"
        ns = obj["metadata"]["namespace"]
        try:
            self.call("POST", f"{prefix}/namespaces/{ns}/{plural}", obj)
        except ApiException as exc:
            if exc.status == 409:
                return False
            raise
        return True

    def _object_path(self, kind: str, namespace: str, name: str) -> str:
        prefix, plural = KINDS[kind]
        return f"{prefix}/namespaces/{namespace}/{plural}/{name}"

    def _unless_gone(self, method: str, path: str, body: Any = None, **kw: Any) -> Any:
        """The call's answer, or _GONE when the object is not there (404)."""
        try:
            return self.call(method, path, body, **kw)
        except ApiException as exc:
            if exc.status == 404:
                return _GONE
            raise

    def get(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        """The object, or None when there is none (404)."""
        found = self._unless_gone("GET", self._object_path(kind, namespace, name))
        return None if found is _GONE else dict(found)

    def patch(self, kind: str, namespace: str, name: str, patch: dict[str, Any]) -> bool:
        """Merge-patch; False when it is gone (404)."""
        path = self._object_path(kind, namespace, name)
        merge = "application/merge-patch+json"
        return self._unless_gone("PATCH", path, patch, content_type=merge) is not _GONE

    def delete(self, kind: str, namespace: str, name: str) -> bool:
        """Delete in the background; False when it is gone already (404)."""
        path = self._object_path(kind, namespace, name)
        return self._unless_gone("DELETE", path, _BACKGROUND) is not _GONE

    def patch_job_status(self, namespace: str, name: str, patch: dict[str, Any]) -> None:
        self.call(
            "PATCH",
            f"/apis/{GROUP}/{VERSION}/namespaces/{namespace}/{PLURAL}/{name}/status",
            patch,
            "application/merge-patch+json",
        )

    def delete_job(self, namespace: str, name: str) -> bool:
        path = f"/apis/{GROUP}/{VERSION}/namespaces/{namespace}/{PLURAL}/{name}"
        return self._unless_gone("DELETE", path, _BACKGROUND) is not _GONE
