"""The double's HTTP surface: a Starlette app serving the Kubernetes REST paths the executor uses.

Routes (``{ns}`` a namespace; every collection also at cluster scope for list/watch across namespaces)::

    /api/v1/{namespaces|nodes}[/{name}]                     GET list|watch, POST; GET, PUT, PATCH, DELETE
    /api/v1/{pods|resourcequotas|limitranges}               GET list|watch (all namespaces)
    /api/v1/namespaces/{ns}/{plural}[/{name}]               the same verbs, namespaced
    /api/v1/namespaces/{ns}/pods/{name}/log                 GET (``follow=true`` streams until the container
                                                            ends; ``stream=Stdout|Stderr|All`` as in 1.32+)
    /apis/networking.k8s.io/v1[/namespaces/{ns}]/networkpolicies[/{name}]
    /apis/batch/v1[/namespaces/{ns}]/jobs[/{name}]

``?watch=true`` streams JSON lines ``{"type", "object"}``: from ``resourceVersion`` (or, without one, ADDED for
what exists), and a single ERROR event carrying a 410 ``Status`` when that revision was compacted away. Errors
are ``Status`` objects with ``Content-Type: application/json``. Every request is appended to ``requests``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from typing import Any

import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from tests.support.kubeapi.cluster import Cluster
from tests.support.kubeapi.store import KINDS, ApiStatus, Obj, Store, Watcher, merge_patch, parse_selector

Scope = MutableMapping[str, Any]
ASGIApp = Callable[[Scope, Callable[[], Awaitable[Any]], Callable[[Any], Awaitable[None]]], Awaitable[None]]


def _json(obj: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(obj), status_code=status, headers={"Content-Type": "application/json"})


def _error(exc: ApiStatus) -> Response:
    return _json(exc.status(), exc.code)


class RequestLog:
    """ASGI middleware: records ``(method, path)`` of every request before serving it."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.requests: list[tuple[str, str]] = []
        self.queries: list[str] = []  # the query string of each request, in the same order

    async def __call__(self, scope: Scope, receive: Callable[[], Awaitable[Any]], send: Any) -> None:
        if scope["type"] == "http":
            self.requests.append((scope["method"], scope["path"]))
            query = scope.get("query_string", b"")
            self.queries.append(query.decode() if isinstance(query, bytes) else str(query))
        await self.app(scope, receive, send)


def build_app(store: Store, cluster: Cluster) -> RequestLog:
    """The ASGI app over ``store`` and ``cluster`` (wrapped in a ``RequestLog``)."""

    async def collection(request: Request) -> Response:
        p = request.path_params
        kind, ns = p["plural"], p.get("ns")
        if kind not in KINDS:
            return _error(ApiStatus(404, "NotFound", f"the server could not find the requested resource ({kind})"))
        try:
            if request.method == "POST":
                body = orjson.loads(await request.body())
                return _json(store.create(kind, ns or "", body), 201)
            selector = parse_selector(request.query_params.get("labelSelector"))
            if request.query_params.get("watch") in ("true", "1"):
                return _watch(kind, ns, selector, request)
            items = store.select(kind, ns, selector)
        except ApiStatus as exc:
            return _error(exc)
        api_version, kind_name = KINDS[kind]
        return _json(
            {
                "kind": f"{kind_name}List",
                "apiVersion": api_version,
                "metadata": {"resourceVersion": str(store.rv)},
                "items": items,
            }
        )

    def _watch(kind: str, ns: str | None, selector: dict[str, str], request: Request) -> Response:
        watcher = Watcher(kind, ns, selector)
        raw_rv = request.query_params.get("resourceVersion")
        timeout = float(request.query_params.get("timeoutSeconds") or 0) or None
        backlog: list[tuple[str, Obj]]
        try:
            if raw_rv and raw_rv != "0":
                backlog = store.since(int(raw_rv), watcher)
            else:
                backlog = [("ADDED", o) for o in store.select(kind, ns, selector)]
        except ApiStatus as exc:
            line = orjson.dumps({"type": "ERROR", "object": exc.status()}) + b"\n"
            return StreamingResponse(iter([line]), headers={"Content-Type": "application/json"})
        store.watchers.add(watcher)

        async def stream() -> AsyncIterator[bytes]:
            try:
                for type_, obj in backlog:
                    yield orjson.dumps({"type": type_, "object": obj}) + b"\n"
                async with asyncio.timeout(timeout):
                    while (item := await watcher.queue.get()) is not None:
                        yield orjson.dumps({"type": item[0], "object": item[1]}) + b"\n"
            except TimeoutError:
                return
            finally:
                store.watchers.discard(watcher)

        return StreamingResponse(stream(), headers={"Content-Type": "application/json"})

    async def item(request: Request) -> Response:
        p = request.path_params
        kind, ns, name = p["plural"], p.get("ns") or "", p["name"]
        if kind not in KINDS:
            return _error(ApiStatus(404, "NotFound", f"the server could not find the requested resource ({kind})"))
        try:
            if request.method == "GET":
                return _json(store.get(kind, ns, name))
            if request.method == "PUT":
                return _json(store.replace(kind, ns, name, orjson.loads(await request.body())))
            if request.method == "PATCH":
                return _json(store.patch(kind, ns, name, orjson.loads(await request.body())))
            return _json(_delete(kind, ns, name, request))
        except ApiStatus as exc:
            return _error(exc)

    def _delete(kind: str, ns: str, name: str, request: Request) -> Obj:
        q = request.query_params
        grace = int(q["gracePeriodSeconds"]) if q.get("gracePeriodSeconds") else None
        if kind == "jobs":
            return cluster.delete_job(ns, name, q.get("propagationPolicy"), grace)
        obj = store.get(kind, ns, name)
        if kind == "pods":
            return cluster.delete_pod(ns, name, grace) or obj
        return store.remove(kind, ns, name) or obj

    async def pod_log(request: Request) -> Response:
        ns, name = request.path_params["ns"], request.path_params["name"]
        try:
            store.get("pods", ns, name)
        except ApiStatus as exc:
            return _error(exc)
        log = cluster.logs.get((ns, name))
        if log is None:
            msg = f'container in pod "{name}" is waiting to start: ContainerCreating'
            return _error(ApiStatus(400, "BadRequest", msg))
        stream = request.query_params.get("stream")  # 1.32+, feature gate PodLogsQuerySplitStreams
        if stream not in (None, "All", "Stdout", "Stderr"):
            return _error(ApiStatus(422, "Invalid", f"stream: Unsupported value: {stream!r}"))
        data = log.view(stream)
        if request.query_params.get("follow") not in ("true", "1"):
            return Response(bytes(data), headers={"Content-Type": "text/plain"})

        async def follow() -> AsyncIterator[bytes]:
            sent, cuts = 0, log.cuts
            while True:
                log.changed.clear()
                if len(data) > sent:
                    chunk = bytes(data[sent:])
                    sent += len(chunk)
                    yield chunk
                    continue
                if log.done or log.cuts != cuts:
                    return
                await log.changed.wait()

        return StreamingResponse(follow(), headers={"Content-Type": "text/plain"})

    verbs = ["GET", "POST", "PUT", "PATCH", "DELETE"]
    routes: list[Route] = []
    for prefix in ("/api/v1", "/apis/{group}/v1"):
        routes += [
            Route(prefix + "/namespaces/{ns}/pods/{name}/log", pod_log, methods=["GET"]),
            Route(prefix + "/namespaces/{ns}/{plural}/{name}", item, methods=verbs),
            Route(prefix + "/namespaces/{ns}/{plural}", collection, methods=verbs),
            Route(prefix + "/{plural}/{name}", item, methods=verbs),
            Route(prefix + "/{plural}", collection, methods=verbs),
        ]

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        cluster.bind()
        yield
        await cluster.shutdown()

    return RequestLog(Starlette(routes=routes, lifespan=lifespan))


__all__ = ["RequestLog", "build_app", "merge_patch"]
