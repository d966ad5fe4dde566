"""Tenant namespaces: each set up once per process, on the tenant's first launch, read first, created if missing.

A namespace is ready when its five objects exist (``manifests``: the Namespace, ResourceQuota, LimitRange and two
NetworkPolicies). Each is read before it is created, so a restarted server pays reads, not writes, and a server
that died half-way through a setup completes it. Concurrent launches of one tenant share one setup.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from lightkube import ApiError, AsyncClient
from lightkube.resources.core_v1 import LimitRange, Namespace, ResourceQuota
from lightkube.resources.networking_v1 import NetworkPolicy

from taskplane.domain.tenant import Quota
from taskplane.executors.kubernetes import manifests, names
from taskplane.executors.kubernetes.config import KubernetesExecutorConfig


class Tenancy:
    """Ready namespaces by tenant (a cache of this process's setups)."""

    def __init__(
        self,
        config: KubernetesExecutorConfig,
        client: Callable[[], AsyncClient],
        quota_for: Callable[[str], Quota | None] | None,
    ) -> None:
        """``client`` gives the API client when needed; ``quota_for`` the tenant's quota, if known."""
        self._config = config
        self._client = client
        self._quota_for = quota_for
        self._ready: dict[str, asyncio.Future[str]] = {}

    async def namespace(self, tenant: str) -> str:
        """The tenant's namespace, set up if this process has not done it yet.

        Raises ``LaunchRefusedError`` for a tenant whose name makes no namespace name, ``ApiError`` or
        ``httpx2.HTTPError`` when the API fails (the next launch tries again).
        """
        ready = self._ready.get(tenant)
        if ready is None:
            ready = self._ready[tenant] = asyncio.get_running_loop().create_future()
            try:
                ready.set_result(await self._set_up(tenant))
            except BaseException as exc:
                self._ready.pop(tenant, None)
                ready.set_exception(exc)
                ready.exception()  # retrieved: the waiters re-raise it
                raise
        return await asyncio.shield(ready)

    def forget(self, tenant: str) -> None:
        """The namespace went away underneath: set it up again on the next launch."""
        self._ready.pop(tenant, None)

    async def _set_up(self, tenant: str) -> str:
        config = self._config
        ns = names.namespace_for(config.namespace_prefix, tenant)
        if ns is None:
            raise manifests.LaunchRefusedError(f"tenant {tenant!r} does not make a valid namespace name")
        quota = self._quota_for(tenant) if self._quota_for is not None else None
        client = self._client()
        wanted: list[tuple[Any, str | None, Any]] = [
            (Namespace, None, manifests.namespace(config, ns, tenant)),
            (ResourceQuota, ns, manifests.resource_quota(config, ns, quota)),
            (LimitRange, ns, manifests.limit_range(config, ns)),
            (NetworkPolicy, ns, manifests.deny_all(config, ns)),
            (NetworkPolicy, ns, manifests.allow_egress(config, ns)),
        ]
        for res, where, obj in wanted:
            try:
                await client.get(res, obj.metadata.name, namespace=where)
                continue
            except ApiError as exc:
                if exc.status.code != 404:
                    raise
            try:
                await client.create(obj)
            except ApiError as exc:
                if exc.status.code != 409:  # created meanwhile by another process: as good
                    raise
        return ns
