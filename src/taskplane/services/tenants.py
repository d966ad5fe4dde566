"""Tenant use cases (``/platform/admin/tenants``): create, read, list, update (merge patch), delete when empty.

The store is the truth; the engine keeps a cache it schedules with, told of each change after the commit::

    request --validate (names, ranges, pools exist)--> Tenant --AdminStore (one transaction)--> engine.set_tenant

The ``default`` tenant always exists: until someone changes it, it is implicit (unlimited, not stored); the first
update stores it. It cannot be deleted.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import replace
from typing import Protocol

from taskplane.domain import quantities as q
from taskplane.domain.access import Resource, Verb
from taskplane.domain.pool import Pool
from taskplane.domain.resources import Resources
from taskplane.domain.tenant import (
    DEFAULT_POLICY,
    DEFAULT_TENANT,
    PRIORITY_MAX,
    PRIORITY_MIN,
    TENANT_NAME,
    UNLIMITED,
    Quota,
    Tenant,
    TenantPolicy,
    default_tenant,
)
from taskplane.errors import ConflictError, InvalidRequestError, NotFoundError
from taskplane.services.access import Caller
from taskplane.services.ports import AdminStore, Clock, KVStore
from taskplane.services.specs import naming
from taskplane.services.views import resources_out, tenant_out
from taskplane.wire import PolicyIn, QuotaIn, TenantCreate, TenantList, TenantOut, TenantStatusOut, TenantUpdate

MAX_WEIGHT = 1000.0
MAX_TASK_LIMIT = 100_000_000  # max_running / max_pending
MAX_QUOTA_GPU = 1_000_000
MAX_POOLS = 256


class TenantCountsView(Protocol):
    """What a tenant holds now (the engine's ``TenantCounts``)."""

    @property
    def pending(self) -> int: ...  # noqa: D102
    @property
    def running(self) -> int: ...  # noqa: D102
    @property
    def usage(self) -> Resources: ...  # noqa: D102
    @property
    def reservations(self) -> int: ...  # noqa: D102


class TenantDirectory(Protocol):
    """The engine's side of tenants: its cache, told of committed changes, and live counts."""

    def pool(self, name: str) -> Pool | None:
        """A pool, or ``None``."""
        ...

    def set_tenant(self, tenant: Tenant) -> None:
        """A create or update was committed."""
        ...

    def drop_tenant(self, name: str) -> None:
        """A delete was committed."""
        ...

    def tenant_counts(self, name: str) -> TenantCountsView:
        """Live pending and running tasks, resources in use, live reservations."""
        ...


def _invalid(message: str, field: str, **extra: object) -> InvalidRequestError:
    return InvalidRequestError(message, code="invalid_field", field=field, **extra)


def _limit(value: int, field: str) -> int:
    if not 0 <= value <= MAX_TASK_LIMIT:
        raise _invalid(f"{field} must be between 0 and {MAX_TASK_LIMIT}", field)
    return value


def _quota(base: Quota, patch: QuotaIn) -> Quota:
    sent = patch.model_fields_set
    values = {
        "millicpu": base.millicpu,
        "memory": base.memory,
        "gpu": base.gpu,
        "max_running": base.max_running,
        "max_pending": base.max_pending,
    }
    if "cpu" in sent:
        with naming("quota.cpu"):
            values["millicpu"] = None if patch.cpu is None else q.parse_millicpu(patch.cpu, field="quota.cpu")
    if "memory" in sent:
        with naming("quota.memory"):
            values["memory"] = None if patch.memory is None else q.parse_bytes(patch.memory, field="quota.memory")
    if "gpu" in sent:
        with naming("quota.gpu"):
            gpu = patch.gpu
            values["gpu"] = None if gpu is None else q.parse_count(gpu, field="quota.gpu", maximum=MAX_QUOTA_GPU)
    for name in ("max_running", "max_pending"):
        if name in sent:
            value = getattr(patch, name)
            values[name] = None if value is None else _limit(value, f"quota.{name}")
    return Quota(**values)


def _policy(base: TenantPolicy, patch: PolicyIn) -> TenantPolicy:
    # Member by member, like the quota: a member left out keeps its value, ``null`` turns it off.
    changes = {name: bool(getattr(patch, name)) for name in patch.model_fields_set}
    return replace(base, **changes)


def _weight(value: float | None) -> float:
    if value is None:
        return 1.0
    weight = float(value)
    if not math.isfinite(weight) or not 0 < weight <= MAX_WEIGHT:
        raise _invalid(f"weight must be greater than 0 and at most {MAX_WEIGHT:g}", "weight")
    return weight


def apply_tenant_fields(base: Tenant, patch: TenantCreate | TenantUpdate, pools: TenantDirectory) -> Tenant:
    """``base`` with the members ``patch`` sets (JSON merge patch: ``null`` = back to the default), validated."""
    sent = patch.model_fields_set
    changes: dict[str, object] = {}
    if "quota" in sent:
        changes["quota"] = UNLIMITED if patch.quota is None else _quota(base.quota, patch.quota)
    if "weight" in sent:
        changes["weight"] = _weight(patch.weight)
    if "pools" in sent:
        changes["pools"] = None if patch.pools is None else _pools(patch.pools, pools)
    if "priority_range" in sent:
        low, high = PRIORITY_MIN, PRIORITY_MAX
        if patch.priority_range is not None:
            given = patch.priority_range
            low = base.priority_min if "min" not in given.model_fields_set else _bound(given.min, PRIORITY_MIN, "min")
            high = base.priority_max if "max" not in given.model_fields_set else _bound(given.max, PRIORITY_MAX, "max")
        if low > high:
            raise _invalid(f"priority_range.min ({low}) must be at most priority_range.max ({high})", "priority_range")
        changes["priority_min"], changes["priority_max"] = low, high
    if "borrowing" in sent:
        changes["borrowing"] = True if patch.borrowing is None else patch.borrowing
    if "policy" in sent:
        changes["policy"] = DEFAULT_POLICY if patch.policy is None else _policy(base.policy, patch.policy)
    return replace(base, **changes)  # type: ignore[arg-type]


def _bound(value: int | None, default: int, end: str) -> int:
    if value is None:
        return default
    if not PRIORITY_MIN <= value <= PRIORITY_MAX:
        raise _invalid(f"priority_range.{end} must be between {PRIORITY_MIN} and {PRIORITY_MAX}", "priority_range")
    return value


def _pools(names: list[str], directory: TenantDirectory) -> tuple[str, ...]:
    if not names:
        raise _invalid("pools must name at least one pool, or be null for every pool", "pools")
    if len(names) > MAX_POOLS:
        raise _invalid(f"at most {MAX_POOLS} pools", "pools")
    for name in names:
        if directory.pool(name) is None:
            raise InvalidRequestError(
                f"pool {name[:64]!r} does not exist", code="unknown_pool", field="pools", pool=name
            )
    return tuple(dict.fromkeys(names))


def _check_name(name: str) -> None:
    if not TENANT_NAME.match(name):
        raise _invalid(
            f"tenant name {name[:64]!r} must be a DNS label: 1-63 of [a-z0-9-], starting and ending alphanumeric",
            "name",
        )


class TenantService:
    """Tenant records: validated here, stored by the ``AdminStore``, mirrored into the engine after each commit."""

    def __init__(
        self,
        store: AdminStore,
        engine: TenantDirectory,
        clock: Clock,
        on_deleted: Callable[[str], None] | None = None,
        state: KVStore | None = None,
    ) -> None:
        self._store = store
        self._engine = engine
        self._clock = clock
        self._on_deleted = on_deleted  # drops cached credentials of a deleted tenant (its keys were revoked)
        self._state = state  # a deleted tenant's state keys go with it

    def _out(self, tenant: Tenant, *, implicit: bool = False) -> TenantOut:
        counts = self._engine.tenant_counts(tenant.name)
        status = TenantStatusOut(
            pending=counts.pending,
            running=counts.running,
            usage=resources_out(counts.usage),
            reservations=counts.reservations,
        )
        return tenant_out(tenant, implicit=implicit, status=status)

    async def _load(self, name: str) -> tuple[Tenant, bool]:
        """The tenant and whether it is the implicit default; 404 ``tenant_not_found``."""
        stored = await self._store.get_tenant(name)
        if stored is not None:
            return stored, False
        if name == DEFAULT_TENANT:
            return default_tenant(), True
        raise _missing(name)

    async def create(self, caller: Caller, body: TenantCreate) -> TenantOut:
        """Create a tenant; 409 ``tenant_exists`` when the name is taken (``default`` always is)."""
        _check_name(body.name)
        if body.name == DEFAULT_TENANT:
            raise ConflictError(
                "tenant 'default' always exists; change it with PATCH /platform/admin/tenants/default",
                code="tenant_exists",
            )
        now = self._clock.now()
        tenant = apply_tenant_fields(Tenant(body.name, created_at=now, updated_at=now), body, self._engine)
        if self._state is not None:
            # Nothing of an earlier tenant of this name may show up in the new one (a purge after its delete
            # may have failed half way).
            await self._state.purge_tenant(body.name)
        audit = caller.entry(now, "tenants.create", f"tenants/{tenant.name}", tenant.name)
        saved = await self._store.create_tenant(tenant, audit)
        caller.audited = True
        self._engine.set_tenant(saved)
        return self._out(saved)

    async def get(self, caller: Caller, name: str) -> TenantOut:
        """One tenant with what it holds now (another tenant answers 404 like a missing one)."""
        caller.check_object(Verb.GET, Resource.TENANTS, name, _missing(name))
        tenant, implicit = await self._load(name)
        return self._out(tenant, implicit=implicit)

    async def list(self, caller: Caller) -> TenantList:
        """Every tenant the caller may see by name, the implicit ``default`` included."""
        visible = caller.visible(Verb.LIST, Resource.TENANTS)
        stored = await self._store.list_tenants()
        items = [self._out(t) for t in stored if visible is None or t.name in visible]
        shown = visible is None or DEFAULT_TENANT in visible
        if shown and all(t.name != DEFAULT_TENANT for t in stored):
            items.append(self._out(default_tenant(), implicit=True))
        return TenantList(items=sorted(items, key=lambda t: t.name))

    async def update(self, caller: Caller, name: str, patch: TenantUpdate) -> TenantOut:
        """Merge ``patch`` into the tenant (nothing changes when it is refused); stores ``default`` on first use."""
        for _ in range(2):
            base, implicit = await self._load(name)
            now = self._clock.now()
            tenant = replace(apply_tenant_fields(base, patch, self._engine), updated_at=now)
            audit = caller.entry(now, "tenants.update", f"tenants/{name}", name)
            if not implicit:
                saved = await self._store.update_tenant(tenant, audit)
                break
            try:
                saved = await self._store.create_tenant(replace(tenant, created_at=now), audit)
                break
            except ConflictError:
                continue  # another request stored the default tenant first: merge into that one
        else:
            raise ConflictError(f"tenant {name} changed concurrently; try again", code="conflict")
        caller.audited = True
        self._engine.set_tenant(saved)
        return self._out(saved)

    async def delete(self, caller: Caller, name: str) -> None:
        """Delete a tenant with no live task or reservation: 409 ``tenant_not_empty`` otherwise.

        ``default`` is protected (409 ``tenant_protected``). The store checks emptiness again in the delete's
        transaction, so a task committed meanwhile still blocks it.
        """
        if name == DEFAULT_TENANT:
            raise ConflictError("tenant 'default' cannot be deleted", code="tenant_protected")
        await self._load(name)
        counts = self._engine.tenant_counts(name)
        if counts.pending or counts.running or counts.reservations:
            raise ConflictError(
                f"tenant {name} has {counts.pending} pending and {counts.running} running tasks and "
                f"{counts.reservations} live reservations; cancel or release them first",
                code="tenant_not_empty",
                pending=counts.pending,
                running=counts.running,
                reservations=counts.reservations,
            )
        await self._store.delete_tenant(
            name, caller.entry(self._clock.now(), "tenants.delete", f"tenants/{name}", name)
        )
        caller.audited = True
        self._engine.drop_tenant(name)
        if self._on_deleted is not None:
            self._on_deleted(name)
        if self._state is not None:
            await self._state.purge_tenant(name)


def _missing(name: str) -> NotFoundError:
    """What a missing tenant, and one the caller may not see, both answer."""
    return NotFoundError(f"tenant {name[:64]!r} not found", code="tenant_not_found")
