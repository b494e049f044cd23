"""The Kubernetes API emulator the operator tests run against: kmock's, with the
few behaviours of a real API server that kopf and the operator rely on.

kmock's `KubernetesEmulator` stores objects and serves list/watch/get/create/
patch/delete, but stamps no metadata. This subclass adds, and only adds:

- `uid`, `creationTimestamp`, `resourceVersion` (one counter for the whole
  server) and `generation` on create; a new `resourceVersion` on every change
  and `generation + 1` when the spec changes (kopf's finalizer JSON-patch
  tests the resourceVersion; the operator reports `observedGeneration`);
- 201 Created on create (the kubernetes client returns None otherwise);
- 422 when a JSON-patch `test` operation fails (kopf's optimistic locking),
  instead of a 500;
- the core group's discovery answer says `groupVersion: v1` (not `/v1`);
- the status subresource: a patch of `.../status` changes only `status`, and a
  patch of the object itself leaves `status` alone, for resources declared
  with a status subresource.

It still has no garbage collection, no selectors and no validation: tests
assert ownerReferences on the objects and validate manifests themselves.
"""

from __future__ import annotations

import asyncio
import copy
import datetime
import itertools
import threading
import uuid
from collections.abc import Coroutine
from typing import Any, TypeVar

import aiohttp.web
import attrs
import jsonpatch
import kmock
from kmock._internal import enums

from rlhf_operator.api import GROUP, PLURAL, VERSION

T = TypeVar("T")

JOB_RESOURCE = f"{GROUP}/{VERSION}/{PLURAL}"
# Resources the operator and the chart touch that kmock's bundled list may lack.
EXTRA_RESOURCES = {
    JOB_RESOURCE: {"kind": "RLHFJob", "namespaced": True, "subresources": {"status"}},
    "scheduling.volcano.sh/v1beta1/podgroups": {"kind": "PodGroup", "namespaced": True},
    "scheduling.x-k8s.io/v1alpha1/podgroups": {"kind": "PodGroup", "namespaced": True},
    "monitoring.coreos.com/v1/servicemonitors": {"kind": "ServiceMonitor", "namespaced": True},
    "monitoring.coreos.com/v1/podmonitors": {"kind": "PodMonitor", "namespaced": True},
}


class StampingEmulator(kmock.KubernetesEmulator):  # type: ignore[misc]
    """kmock's emulator plus metadata stamping, 201, 422 and the status subresource."""

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        self._versions = itertools.count(1)
        self.log: list[Any] = []  # every request served, in order
        self._swapped: dict[int, Any] = {}  # id(parsed request) -> stamped request
        self.resources.load_bundled()
        for key, info in EXTRA_RESOURCES.items():
            entry = self.resources[key]
            entry.kind = info["kind"]
            entry.namespaced = info["namespaced"]
            entry.subresources = set(info.get("subresources", set()))
            entry.verbs = {"get", "list", "watch", "create", "patch", "update", "delete"}

    async def _serve_version(self, request: Any) -> Any:
        # kmock answers "/v1" as the core group's groupVersion; clients (Helm's
        # discovery) need "v1".
        payload = await super()._serve_version(request)
        if isinstance(payload, dict) and str(payload.get("groupVersion", "")).startswith("/"):
            payload["groupVersion"] = payload["groupVersion"][1:]
        return payload

    def _has_status_subresource(self, resource: Any) -> bool:
        for known in self.resources:
            if known == resource:
                return "status" in set(self.resources[known].subresources)
        return False

    async def _handle(self, request: Any) -> aiohttp.web.StreamResponse:
        self.log.append(request)  # when it arrives: watches stay open for long
        try:
            return await self._handle_stamped(request)
        finally:
            # kmock finds a request's reactions by scanning its whole request log
            # (O(requests) per request): keep only requests in flight there, and
            # the full history in `log`.
            served = self._swapped.pop(id(request), request)
            for i in range(len(self._requests) - 1, -1, -1):
                if self._requests[i] is served:
                    del self._requests[i]
                    break

    async def _handle_stamped(self, request: Any) -> aiohttp.web.StreamResponse:
        original = request
        if request.resource is not None and request.action == enums.action.CREATE:
            request = self._stamp_create(request)
        elif (
            request.resource is not None
            and request.action == enums.action.UPDATE
            and request.name is not None
        ):
            request = await self._resolve_patch(request)
            if isinstance(request, aiohttp.web.StreamResponse):
                return request
        if request is not original:
            # kmock matches its reactions to requests by identity in its request log.
            for i in range(len(self._requests) - 1, -1, -1):
                if self._requests[i] is original:
                    self._requests[i] = request
                    self._swapped[id(original)] = request
                    break
        response = await super()._handle(request)
        if request.action == enums.action.CREATE and response.status == 200:
            response.set_status(201)
        return response

    def _stamp_create(self, request: Any) -> Any:
        obj = copy.deepcopy(request.data) if isinstance(request.data, dict) else {}
        meta = obj.setdefault("metadata", {})
        if not meta.get("name") and meta.get("generateName"):
            meta["name"] = meta["generateName"] + uuid.uuid4().hex[:5]
        if request.namespace and not meta.get("namespace"):
            meta["namespace"] = request.namespace
        meta["uid"] = str(uuid.uuid4())
        meta["creationTimestamp"] = _now()
        meta["resourceVersion"] = str(next(self._versions))
        meta["generation"] = 1
        return attrs.evolve(request, data=obj)

    async def _resolve_patch(self, request: Any) -> Any:
        """Turn a merge or JSON patch into a whole-object replacement, stamped."""
        key = (request.resource, request.namespace, request.name)
        async with self._lock:
            if key not in self._objects or self._objects[key].deleted:
                return request  # the parent answers 404
            old = copy.deepcopy(self._objects[key].raw)
        try:
            if isinstance(request.data, list):
                new = jsonpatch.apply_patch(old, request.data, in_place=False)
            elif isinstance(request.data, dict):
                new = _merge(copy.deepcopy(old), request.data)
            else:
                return await self._render_error(
                    kmock.KubernetesError(status=400, reason="BadRequest", message="no patch body")
                )
        except (jsonpatch.JsonPatchException, jsonpatch.JsonPointerException) as exc:
            return await self._render_error(
                kmock.KubernetesError(status=422, reason="Invalid", message=str(exc), details={})
            )
        if self._has_status_subresource(request.resource):
            if request.subresource == "status":
                new = {**old, "status": new.get("status")} if "status" in new else dict(old)
            else:
                new["status"] = old.get("status")
            if new.get("status") is None:
                new.pop("status", None)
        meta = new.setdefault("metadata", {})
        for field in ("uid", "creationTimestamp", "namespace", "name"):
            if field in old.get("metadata", {}):
                meta[field] = old["metadata"][field]
        meta["resourceVersion"] = str(next(self._versions))
        if new.get("spec") != old.get("spec"):
            meta["generation"] = int(old.get("metadata", {}).get("generation", 1)) + 1
        return attrs.evolve(request, data=[{"op": "replace", "path": "", "value": new}])


def _merge(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch (null deletes, lists replace)."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    if not isinstance(target, dict):
        target = {}
    for k, v in patch.items():
        if v is None:
            target.pop(k, None)
        else:
            target[k] = _merge(target.get(k), v)
    return target


def _now() -> str:
    return datetime.datetime.now(tz=datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class EmulatorThread:
    """The emulator on 127.0.0.1 in a thread of its own, so that tests and the
    operator (in another thread) reach it over HTTP like a real API server."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.emulator: StampingEmulator | None = None
        self.url = ""
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._run, name="kmock", daemon=True)

    def start(self) -> EmulatorThread:
        self._thread.start()
        if not self._ready.wait(30):
            raise RuntimeError("the emulator did not start")
        return self

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_until_complete(self._serve())

    async def _serve(self) -> None:
        self._stop = asyncio.Event()
        async with StampingEmulator() as emulator, kmock.Server(emulator) as server:
            self.emulator = emulator
            self.url = f"http://127.0.0.1:{server.port}"
            self._ready.set()
            await self._stop.wait()

    def call(self, coro: Coroutine[Any, Any, T], timeout: float = 30) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def stop(self) -> None:
        if self._stop is not None:
            self.loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(30)

    def requests(self) -> list[Any]:
        """Requests served so far (for counting API calls)."""
        assert self.emulator is not None
        return list(self.emulator.log)
