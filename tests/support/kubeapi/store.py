"""The double's object store: typed-less JSON objects, one global ``resourceVersion``, history and watchers.

Everything happens on one event loop and no method awaits, so each call is atomic. A write bumps the global
revision, stamps it on the object, appends ``(rv, kind, type, object)`` to the history (a bounded deque:
``history_limit``) and hands the event to every matching watcher's queue and to the controllers' listeners.

Errors are ``ApiStatus`` exceptions carrying a Kubernetes ``Status`` object (AlreadyExists, NotFound, Invalid,
Conflict, Gone), rendered by the app as the HTTP status with an ``application/json`` body.
"""

from __future__ import annotations

import asyncio
import copy
import re
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson

Obj = dict[str, Any]

CLUSTER_SCOPED = frozenset({"namespaces", "nodes"})
KINDS = {
    "namespaces": ("v1", "Namespace"),
    "nodes": ("v1", "Node"),
    "pods": ("v1", "Pod"),
    "resourcequotas": ("v1", "ResourceQuota"),
    "limitranges": ("v1", "LimitRange"),
    "networkpolicies": ("networking.k8s.io/v1", "NetworkPolicy"),
    "jobs": ("batch/v1", "Job"),
}
DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
DNS_SUBDOMAIN = re.compile(r"^(?=.{1,253}$)[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]{0,61})?[A-Za-z0-9])?$")


def clone(obj: Obj) -> Obj:
    """A deep copy of a JSON value (orjson round trip: an order of magnitude faster than ``copy.deepcopy``)."""
    copied: Obj = orjson.loads(orjson.dumps(obj))
    return copied


def now_iso() -> str:
    """The current time as Kubernetes writes it (RFC 3339, seconds)."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class ApiStatus(Exception):
    """An API error: the ``Status`` object the server answers with."""

    def __init__(self, code: int, reason: str, message: str, *, kind: str = "", name: str = "") -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason
        self.message = message
        self.details = {"name": name, "kind": kind}

    def status(self) -> Obj:
        """The ``Status`` object (``kind: Status``, ``status: Failure``)."""
        return {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "details": self.details,
            "code": self.code,
        }


def gone(rv: int, oldest: int) -> ApiStatus:
    """410: ``rv`` is older than the retained history."""
    return ApiStatus(410, "Expired", f"too old resource version: {rv} ({oldest})")


def parse_selector(raw: str | None) -> dict[str, str]:
    """Equality-based label selectors only (``a=b,c==d``); anything else is refused with 400."""
    out: dict[str, str] = {}
    for part in (raw or "").split(","):
        part = part.strip()
        if not part:
            continue
        if "!=" in part or " in " in part or " notin " in part or "=" not in part:
            raise ApiStatus(400, "BadRequest", f"unsupported label selector term {part!r} (the double: = and ==)")
        key, _, value = part.replace("==", "=").partition("=")
        out[key.strip()] = value.strip()
    return out


def matches(obj: Obj, selector: Mapping[str, str]) -> bool:
    """True when every selector label is on ``obj``."""
    labels = obj.get("metadata", {}).get("labels") or {}
    return all(labels.get(k) == v for k, v in selector.items())


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch (the double applies strategic-merge patches the same way)."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = merge_patch(out.get(key), value)
    return out


@dataclass(eq=False)
class Watcher:
    """One open watch: which objects it wants and the queue its stream reads."""

    kind: str
    namespace: str | None
    selector: Mapping[str, str]
    queue: asyncio.Queue[tuple[str, Obj] | None] = field(default_factory=asyncio.Queue)

    def wants(self, kind: str, obj: Obj) -> bool:
        """True when ``obj`` of ``kind`` is in this watch's scope."""
        if kind != self.kind:
            return False
        if self.namespace is not None and obj["metadata"].get("namespace") != self.namespace:
            return False
        return matches(obj, self.selector)


Listener = Callable[[str, str, Obj], None]  # (kind, event type, object)


class Store:
    """Objects by ``(kind, namespace, name)``, a global revision and a bounded event history."""

    def __init__(self, history_limit: int = 100_000) -> None:
        self.rv = 0
        self.objects: dict[tuple[str, str, str], Obj] = {}
        self.history: deque[tuple[int, str, str, Obj]] = deque(maxlen=history_limit)
        self.compacted_to = 0  # revisions at or below this are gone (``compact``)
        self.watchers: set[Watcher] = set()
        self.listeners: list[Listener] = []

    # ------------------------------------------------------------------------------------------ reads

    def get(self, kind: str, namespace: str, name: str) -> Obj:
        """A copy of one object; 404 when missing."""
        obj = self.objects.get((kind, namespace, name))
        if obj is None:
            raise ApiStatus(404, "NotFound", f'{kind} "{name}" not found', kind=kind, name=name)
        return clone(obj)

    def peek(self, kind: str, namespace: str, name: str) -> Obj | None:
        """The stored object itself (not a copy) or ``None``; for controllers."""
        return self.objects.get((kind, namespace, name))

    def select(self, kind: str, namespace: str | None, selector: Mapping[str, str]) -> list[Obj]:
        """Copies of the matching objects, by namespace and name."""
        items = [
            clone(o)
            for (k, ns, _), o in sorted(self.objects.items(), key=lambda kv: kv[0])
            if k == kind and (namespace is None or ns == namespace) and matches(o, selector)
        ]
        return items

    def oldest(self) -> int:
        """The oldest revision a watch may start from (exclusive)."""
        first = self.history[0][0] - 1 if self.history else self.rv
        return max(first, self.compacted_to)

    def since(self, rv: int, watcher: Watcher) -> list[tuple[str, Obj]]:
        """The events after ``rv`` this watcher wants; 410 when ``rv`` is older than the history."""
        if rv < self.oldest():
            raise gone(rv, self.oldest())
        return [(t, clone(o)) for r, k, t, o in self.history if r > rv and watcher.wants(k, o)]

    def compact(self) -> None:
        """Forget every event so far: a watch from any earlier revision gets 410 Gone."""
        self.history.clear()
        self.compacted_to = self.rv

    # ----------------------------------------------------------------------------------------- writes

    def create(self, kind: str, namespace: str, obj: Obj) -> Obj:
        """Validate and insert; 409 AlreadyExists, 422 Invalid, 404 when the namespace is missing."""
        meta = obj.setdefault("metadata", {})
        if not meta.get("name") and meta.get("generateName"):
            meta["name"] = meta["generateName"] + uuid.uuid4().hex[:5]
        name = meta.get("name") or ""
        validate(kind, obj)
        if kind not in CLUSTER_SCOPED:
            if ("namespaces", "", namespace) not in self.objects:
                raise ApiStatus(
                    404, "NotFound", f'namespaces "{namespace}" not found', kind="namespaces", name=namespace
                )
            meta["namespace"] = namespace
        key = (kind, "" if kind in CLUSTER_SCOPED else namespace, name)
        if key in self.objects:
            raise ApiStatus(409, "AlreadyExists", f'{kind} "{name}" already exists', kind=kind, name=name)
        api_version, kind_name = KINDS[kind]
        obj["apiVersion"], obj["kind"] = api_version, kind_name
        meta["uid"] = str(uuid.uuid4())
        meta["creationTimestamp"] = now_iso()
        meta.setdefault("labels", {})
        if kind == "namespaces":
            meta["labels"].setdefault("kubernetes.io/metadata.name", name)
        self.objects[key] = obj
        return self._commit(kind, "ADDED", obj)

    def replace(self, kind: str, namespace: str, name: str, obj: Obj, *, check_rv: bool = True) -> Obj:
        """Replace the whole object; 409 Conflict on a stale ``metadata.resourceVersion``."""
        key = (kind, "" if kind in CLUSTER_SCOPED else namespace, name)
        old = self.objects.get(key)
        if old is None:
            raise ApiStatus(404, "NotFound", f'{kind} "{name}" not found', kind=kind, name=name)
        sent = obj.get("metadata", {}).get("resourceVersion")
        if check_rv and sent and sent != old["metadata"]["resourceVersion"]:
            raise ApiStatus(409, "Conflict", f'the object {kind} "{name}" has been modified', kind=kind, name=name)
        validate(kind, obj)
        for fixed in ("uid", "creationTimestamp", "namespace", "name"):
            if fixed in old["metadata"]:
                obj.setdefault("metadata", {})[fixed] = old["metadata"][fixed]
        obj["apiVersion"], obj["kind"] = old["apiVersion"], old["kind"]
        self.objects[key] = obj
        return self._commit(kind, "MODIFIED", obj)

    def patch(self, kind: str, namespace: str, name: str, patch: Obj) -> Obj:
        """Merge-patch one object."""
        old = self.get(kind, namespace, name)
        return self.replace(kind, namespace, name, merge_patch(old, patch), check_rv=False)

    def update(self, kind: str, obj: Obj) -> Obj:
        """Controllers: commit a change made to a stored object in place."""
        return self._commit(kind, "MODIFIED", obj)

    def remove(self, kind: str, namespace: str, name: str) -> Obj | None:
        """Delete for good (after finalizers and grace); ``None`` when already gone."""
        obj = self.objects.pop((kind, "" if kind in CLUSTER_SCOPED else namespace, name), None)
        if obj is None:
            return None
        return self._commit(kind, "DELETED", obj)

    def _commit(self, kind: str, type_: str, obj: Obj) -> Obj:
        self.rv += 1
        obj["metadata"]["resourceVersion"] = str(self.rv)
        snapshot = clone(obj)
        self.history.append((self.rv, kind, type_, snapshot))
        for watcher in self.watchers:
            if watcher.wants(kind, snapshot):
                watcher.queue.put_nowait((type_, snapshot))
        for listener in self.listeners:
            listener(kind, type_, obj)
        return clone(obj)

    def close_watches(self) -> None:
        """End every open watch stream (the server is going away)."""
        for watcher in self.watchers:
            watcher.queue.put_nowait(None)


def _require(cond: bool, kind: str, name: str, message: str) -> None:
    if not cond:
        raise ApiStatus(422, "Invalid", f'{kind} "{name}" is invalid: {message}', kind=kind, name=name)


def _check_labels(kind: str, name: str, labels: Iterable[tuple[str, Any]]) -> None:
    for key, value in labels:
        _require(isinstance(value, str) and bool(LABEL_VALUE.match(value)), kind, name, f"label {key}: bad value")


def validate(kind: str, obj: Obj) -> None:
    """The checks the API server makes that the executor could get wrong: names, labels, required fields."""
    meta = obj.get("metadata") or {}
    name = meta.get("name") or ""
    _require(bool(name), kind, name, "metadata.name: Required value")
    pattern = DNS_LABEL if kind in ("namespaces", "pods") else DNS_SUBDOMAIN
    if kind == "jobs":  # the Job's name becomes a label value (job-name) of its pods
        _require(len(name) <= 63, kind, name, "metadata.name: must be no more than 63 characters")
    _require(bool(pattern.match(name)), kind, name, "metadata.name: must be a lowercase RFC 1123 name")
    _check_labels(kind, name, (meta.get("labels") or {}).items())
    if kind in ("jobs", "pods"):
        spec = obj.get("spec") or {}
        pod = spec.get("template", {}).get("spec") if kind == "jobs" else spec
        _require(isinstance(pod, dict), kind, name, "spec.template.spec: Required value")
        assert isinstance(pod, dict)
        containers = pod.get("containers") or []
        _require(len(containers) > 0, kind, name, "spec.template.spec.containers: Required value")
        for c in containers:
            _require(bool(DNS_LABEL.match(c.get("name") or "")), kind, name, "containers[].name: Invalid value")
            _require(bool(c.get("image")), kind, name, "containers[].image: Required value")
        if kind == "jobs":
            policy = pod.get("restartPolicy")
            _require(policy in ("Never", "OnFailure"), kind, name, "spec.template.spec.restartPolicy: Unsupported")
            _check_labels(kind, name, ((spec.get("template", {}).get("metadata") or {}).get("labels") or {}).items())
