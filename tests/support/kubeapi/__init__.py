"""A test double of the Kubernetes API: the endpoints taskplane's Kubernetes executor uses, and a fake cluster.

**A double, not a Kubernetes.** It follows the API reference for what it serves and nothing else:

- core/v1 namespaces, nodes, pods, pods/log (``follow=true`` streams), resourcequotas, limitranges;
  networking.k8s.io/v1 networkpolicies; batch/v1 jobs. Create (POST), get, list, replace (PUT), patch (merge and
  strategic-merge both applied as JSON merge patch), delete (``propagationPolicy``, ``gracePeriodSeconds``).
- Equality label selectors; a global, monotonically increasing ``resourceVersion``; watches from a revision
  (JSON lines ``{"type": ADDED|MODIFIED|DELETED|ERROR, "object"}``, no bookmarks), an ERROR event with a
  410 ``Status`` when the revision is older than the kept history (``history_limit``, or ``compact()``).
- ``Status`` errors: 404 NotFound, 409 AlreadyExists / Conflict (stale ``resourceVersion`` on replace),
  422 Invalid (DNS names, label values, required pod fields, restartPolicy), 400 for unsupported selectors.
- A Job controller, a scheduler against nodes' allocatable and a kubelet running containers as local processes
  (``cluster.py``), with faults: evict, OOM-kill, lose a node, unknown images (``ErrImagePull``), compaction.

Not covered: authentication and RBAC (any token is accepted), admission (pod security, ResourceQuota and
LimitRange are stored, never enforced), field selectors, set-based selectors, pagination (``limit`` and
``continue`` are ignored), server-side apply, images (a container runs ``command`` on this machine, as this
user, unlimited: ``runAsUser``, ``readOnlyRootFilesystem`` and resource limits are not applied), restarts
(``restartPolicy`` other than Never), namespace deletion cascading, events, bookmarks, HTTP/2, websockets.

Use it in-process (``client()``: a lightkube ``AsyncClient`` whose transport is the app) or over loopback HTTP
(``serve_in_thread``, with a kubeconfig file) for a server in another process.
"""

from __future__ import annotations

from collections.abc import Iterable

from lightkube import AsyncClient
from lightkube.config.kubeconfig import KubeConfig

from tests.support.kubeapi.app import build_app
from tests.support.kubeapi.cluster import DEFAULT_IMAGES, Cluster
from tests.support.kubeapi.store import Obj, Store
from tests.support.kubeapi.transport import StreamingASGITransport


def kubeconfig_dict(server: str, *, context: str = "double", token: str = "double-token") -> dict[str, object]:
    """A kubeconfig with one cluster, user (a bearer token the double ignores) and context."""
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": context, "cluster": {"server": server}}],
        "users": [{"name": context, "user": {"token": token}}],
        "contexts": [{"name": context, "context": {"cluster": context, "user": context}}],
        "current-context": context,
    }


WRITE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})


class KubeApiDouble:
    """A store, its controllers and the ASGI app serving them."""

    def __init__(
        self,
        *,
        kubelet: str = "process",
        history_limit: int = 100_000,
        known_images: Iterable[str] = DEFAULT_IMAGES,
    ) -> None:
        self.store = Store(history_limit)
        self.cluster = Cluster(self.store, kubelet=kubelet, known_images=frozenset(known_images))
        self.app = build_app(self.store, self.cluster)
        self._clients: list[AsyncClient] = []

    # ---------------------------------------------------------------------------------- in-process

    def bind(self) -> None:
        """Start the controllers on the running loop (in-process use; the HTTP server's lifespan does it too)."""
        self.cluster.bind()

    async def shutdown(self) -> None:
        """Kill container processes, end watches, close the clients ``client`` made."""
        await self.cluster.shutdown()
        for client in self._clients:
            await client.close()

    def client(self) -> AsyncClient:
        """A lightkube client served in-process by this double."""
        config = KubeConfig.from_dict(kubeconfig_dict("http://kubeapi.double"))
        client = AsyncClient(config, transport=StreamingASGITransport(self.app), trust_env=False)
        self._clients.append(client)
        return client

    # ---------------------------------------------------------------------------------- inspection

    @property
    def requests(self) -> list[tuple[str, str]]:
        """Every ``(method, path)`` served so far."""
        return self.app.requests

    def rbac_calls(self) -> set[tuple[str, str, str]]:
        """Every request so far as the ``(apiGroup, resource, verb)`` RBAC would check."""
        calls = set()
        for (method, path), query in zip(self.app.requests, self.app.queries, strict=True):
            parts = path.strip("/").split("/")
            group, rest = ("", parts[2:]) if parts[0] == "api" else (parts[1], parts[3:])
            if rest[:1] == ["namespaces"] and len(rest) >= 3:
                rest = rest[2:]  # a namespaced path: /namespaces/<ns>/<resource>[/<name>[/<sub>]]
            resource = rest[0] + (f"/{rest[2]}" if len(rest) > 2 else "")
            named = len(rest) > 1
            if method == "GET":
                verb = "get" if named else ("watch" if "watch=true" in query else "list")
            else:
                verb = {"POST": "create", "PUT": "update", "PATCH": "patch", "DELETE": "delete"}[method]
            calls.add((group, resource, verb))
        return calls

    def writes(self) -> list[tuple[str, str]]:
        """The mutating requests (POST/PUT/PATCH/DELETE) served so far."""
        return [r for r in self.requests if r[0] in WRITE_METHODS]

    def objects(self, kind: str, namespace: str | None = None) -> list[Obj]:
        """Copies of the stored objects of ``kind`` (plural: ``jobs``, ``pods``, ...)."""
        return self.store.select(kind, namespace, {})

    def pod_of(self, namespace: str, job: str) -> Obj | None:
        """The (first) pod of a Job, or ``None``."""
        pods = self.store.select("pods", namespace, {"job-name": job})
        return pods[0] if pods else None

    def log_of(self, namespace: str, pod: str) -> bytes:
        """What a pod's container wrote so far."""
        log = self.cluster.logs.get((namespace, pod))
        return b"" if log is None else bytes(log.data)


__all__ = ["KubeApiDouble"]
