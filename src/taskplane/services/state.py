"""State API use cases: conditional puts and deletes, reads, listings, transactions, leases, watches.

    HTTP PUT/DELETE with If-Match / If-None-Match --> one Txn (compare mod_revision / exists, then the write)
    POST /transaction                              --> validated Txn, as given
    each write                                     --> KVStore.txn(..., audit) : the change and its record together
    watch                                          --> KVStore.events polled from a revision, as SSE lines

The tenant is the caller's own (or the one it names with ``tenant=``, where it must hold the permission):
keys of other tenants are unreachable by construction, not by filtering.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import orjson

from taskplane.domain.access import Resource, Verb
from taskplane.domain.state import (
    Compare,
    CompareOp,
    CompareTarget,
    Event,
    KeyValue,
    Op,
    OpKind,
    OpResult,
    Txn,
    check_key,
    check_prefix,
)
from taskplane.domain.tenant import DEFAULT_TENANT
from taskplane.errors import InvalidRequestError, NotFoundError, PayloadTooLargeError, PreconditionFailedError
from taskplane.services.access import Caller
from taskplane.services.ports import Clock, KVLimits, KVStore
from taskplane.wire.state import (
    DeleteResult,
    EventOut,
    KeyList,
    KeyValueOut,
    LeaseOut,
    LeaseRevoked,
    OpResultOut,
    PutResult,
    TxnIn,
    TxnOut,
)

MAX_LIST_LIMIT = 1000
MAX_TTL_SECONDS = 365 * 86400
WATCH_POLL_SECONDS = 0.05
WATCH_BATCH = 500
HEARTBEAT_SECONDS = 15.0


def kv_out(kv: KeyValue) -> KeyValueOut:
    """The wire form of an entry."""
    return KeyValueOut(
        key=kv.key,
        value=kv.value,
        create_revision=kv.create_revision,
        mod_revision=kv.mod_revision,
        version=kv.version,
        lease=kv.lease,
    )


def _maybe(kv: KeyValue | None) -> KeyValueOut | None:
    return None if kv is None else kv_out(kv)


def result_out(r: OpResult) -> OpResultOut:
    """The wire form of an op's result."""
    return OpResultOut(op=r.kind.value, key=r.key, kv=_maybe(r.kv), prev=_maybe(r.prev), deleted=r.deleted)


def _key(key: str, field: str = "key") -> str:
    problem = check_key(key)
    if problem is not None:
        raise InvalidRequestError(problem, code="invalid_key", field=field)
    return key


def _revision(value: int | None, field: str) -> int | None:
    if value is not None and value < 1:
        raise InvalidRequestError(f"{field} must be a revision >= 1", code="invalid_field", field=field)
    return value


def parse_if_match(value: str | None) -> int | None:
    """The mod_revision an ``If-Match`` header names (a number, quoted or not); 422 when it is not one."""
    if value is None:
        return None
    text = value.strip().removeprefix("W/").strip('"')
    if not text.isdigit() or len(text) > 19:
        raise InvalidRequestError(
            "If-Match must be the key's mod_revision (a number, as in the ETag)", code="invalid_if_match"
        )
    return int(text)


class StateService:
    """The state API over a ``KVStore``."""

    def __init__(
        self, store: KVStore, clock: Clock, limits: KVLimits, tenant_exists: Callable[[str], bool] | None = None
    ) -> None:
        self._store = store
        self._clock = clock
        self._limits = limits
        self._tenant_exists = tenant_exists

    def _tenant(self, caller: Caller, verb: str, tenant: str | None, resource: str = Resource.STATE) -> str:
        name = tenant or caller.default_tenant(DEFAULT_TENANT)
        caller.check_target(verb, resource, name)
        # No state may wait for a tenant that does not exist yet (it would appear in one made later).
        if self._tenant_exists is not None and not self._tenant_exists(name):
            raise NotFoundError(f"tenant {name!r} not found", code="tenant_not_found", field="tenant")
        return name

    def _value(self, raw: bytes) -> Any:
        if len(raw) > self._limits.max_value_bytes:
            raise PayloadTooLargeError(
                f"the value is {len(raw)} bytes; the limit is {self._limits.max_value_bytes}", code="value_too_large"
            )
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise InvalidRequestError("the body must be a JSON value", code="invalid_value") from None

    def _check_size(self, value: Any, field: str) -> None:
        size = len(orjson.dumps(value))
        if size > self._limits.max_value_bytes:
            raise PayloadTooLargeError(
                f"{field} is {size} bytes; the limit is {self._limits.max_value_bytes}", code="value_too_large"
            )

    # ---------------------------------------------------------------------------------------- reads

    async def get(self, caller: Caller, key: str, tenant: str | None, revision: int | None) -> KeyValueOut:
        """One entry (at ``revision`` if given); 404 ``key_not_found``."""
        name = self._tenant(caller, Verb.GET, tenant)
        found = await self._store.get(name, _key(key), self._clock.now(), _revision(revision, "revision"))
        if found is None:
            raise NotFoundError(f"key {key[:128]!r} not found", code="key_not_found")
        return kv_out(found)

    async def list_keys(
        self,
        caller: Caller,
        prefix: str,
        tenant: str | None,
        limit: int,
        after: str | None,
        revision: int | None,
    ) -> KeyList:
        """Entries under ``prefix`` in key order, one page."""
        name = self._tenant(caller, Verb.LIST, tenant)
        problem = check_prefix(prefix)
        if problem is not None:
            raise InvalidRequestError(problem, code="invalid_key", field="prefix")
        if not 1 <= limit <= MAX_LIST_LIMIT:
            raise InvalidRequestError(f"limit must be between 1 and {MAX_LIST_LIMIT}", code="invalid_field")
        if after is not None and not after.startswith(prefix):
            raise InvalidRequestError("after must be a key under the prefix", code="invalid_field", field="after")
        page = await self._store.range(name, prefix, self._clock.now(), limit, after, _revision(revision, "revision"))
        return KeyList(items=[kv_out(kv) for kv in page.items], revision=page.revision, next_key=page.next_key)

    # --------------------------------------------------------------------------------------- writes

    async def put(
        self,
        caller: Caller,
        key: str,
        body: bytes,
        tenant: str | None,
        *,
        if_match: str | None,
        if_none_match: str | None,
        lease: int | None,
        ttl: float | None,
    ) -> PutResult:
        """Write ``key``: plain, compare-and-swap (``If-Match``) or create-only (``If-None-Match: *``)."""
        name = self._tenant(caller, Verb.UPDATE, tenant)
        _key(key)
        value = self._value(body)
        expected = parse_if_match(if_match)
        if if_none_match is not None and if_none_match.strip() != "*":
            raise InvalidRequestError("If-None-Match takes only '*' (create if absent)", code="invalid_if_none_match")
        if lease is not None and ttl is not None:
            raise InvalidRequestError("give lease or ttl, not both", code="invalid_field", field="ttl")
        compares: list[Compare] = []
        if expected is not None:
            compares.append(Compare(key, CompareTarget.MOD_REVISION, CompareOp.EQUAL, expected))
        if if_none_match is not None:
            compares.append(Compare(key, CompareTarget.EXISTS, CompareOp.EQUAL, False))
        now = self._clock.now()
        granted = None
        if ttl is not None:
            granted = await self._store.grant_lease(name, self._ttl(ttl), now)
            lease = granted.id
        txn = Txn(compares, success=[Op(OpKind.PUT, key, value, lease)], failure=[Op(OpKind.GET, key)])
        result = await self._store.txn(name, txn, now, caller.entry(now, "state.put", f"state/{key}", name))
        if not result.succeeded:
            if granted is not None:
                await self._store.revoke_lease(name, granted.id, now)
            current = result.results[0].kv if result.results else None
            raise PreconditionFailedError(
                f"key {key[:128]!r} " + ("exists" if if_none_match is not None and current else "has changed"),
                mod_revision=current.mod_revision if current is not None else 0,
            )
        caller.audited = True
        put = result.results[0]
        assert put.kv is not None
        return PutResult(revision=result.revision, kv=kv_out(put.kv), prev=_maybe(put.prev))

    async def delete(self, caller: Caller, key: str, tenant: str | None, *, if_match: str | None) -> DeleteResult:
        """Delete ``key`` (conditionally with ``If-Match``); deleting a missing key is not an error."""
        name = self._tenant(caller, Verb.DELETE, tenant)
        _key(key)
        expected = parse_if_match(if_match)
        compares = [] if expected is None else [Compare(key, CompareTarget.MOD_REVISION, CompareOp.EQUAL, expected)]
        now = self._clock.now()
        txn = Txn(compares, success=[Op(OpKind.DELETE, key)], failure=[Op(OpKind.GET, key)])
        result = await self._store.txn(name, txn, now, caller.entry(now, "state.delete", f"state/{key}", name))
        if not result.succeeded:
            current = result.results[0].kv if result.results else None
            raise PreconditionFailedError(
                f"key {key[:128]!r} has changed", mod_revision=current.mod_revision if current is not None else 0
            )
        done = result.results[0]
        caller.audited = done.deleted > 0  # a delete that found nothing changed nothing: the gate records it
        return DeleteResult(revision=result.revision, deleted=done.deleted, prev=_maybe(done.prev))

    def _ops(self, ops: Sequence[Any], branch: str) -> list[Op]:
        out: list[Op] = []
        for i, op in enumerate(ops):
            field = f"{branch}[{i}]"
            kind = OpKind(op.op)
            if kind is OpKind.DELETE_PREFIX:
                problem = check_prefix(op.key)
                if problem is not None:
                    raise InvalidRequestError(problem, code="invalid_key", field=f"{field}.key")
            else:
                _key(op.key, f"{field}.key")
            if kind is OpKind.PUT:
                self._check_size(op.value, f"{field}.value")
            elif op.value is not None or op.lease is not None:
                raise InvalidRequestError(f"{field}: only put takes a value or a lease", code="invalid_field")
            out.append(Op(kind, op.key, op.value, op.lease))
        return out

    async def txn(self, caller: Caller, body: TxnIn, tenant: str | None) -> TxnOut:
        """Apply a transaction atomically (etcd semantics)."""
        name = self._tenant(caller, Verb.UPDATE, tenant)
        count = len(body.compare) + len(body.success) + len(body.failure)
        if count > self._limits.max_ops:
            raise InvalidRequestError(
                f"a transaction has at most {self._limits.max_ops} compares and ops; this one has {count}",
                code="too_many_ops",
            )
        compares: list[Compare] = []
        for i, c in enumerate(body.compare):
            _key(c.key, f"compare[{i}].key")
            target = CompareTarget(c.target)
            if target is CompareTarget.EXISTS:
                if not isinstance(c.value, bool) or c.op not in ("equal", "not_equal"):
                    raise InvalidRequestError(
                        f"compare[{i}]: exists compares a boolean with equal or not_equal", code="invalid_field"
                    )
            elif target is not CompareTarget.VALUE and (isinstance(c.value, bool) or not isinstance(c.value, int)):
                raise InvalidRequestError(f"compare[{i}]: {target.value} compares an integer", code="invalid_field")
            elif target is CompareTarget.VALUE:
                self._check_size(c.value, f"compare[{i}].value")
            compares.append(Compare(c.key, target, CompareOp(c.op), c.value))
        txn = Txn(compares, self._ops(body.success, "success"), self._ops(body.failure, "failure"))
        writes = any(op.kind is not OpKind.GET for op in (*txn.success, *txn.failure))
        now = self._clock.now()
        audit = caller.entry(now, "state.txn", "state", name, ops=count) if writes else None
        result = await self._store.txn(name, txn, now, audit)
        # The store wrote the record only if the branch changed something; otherwise the gate records it.
        caller.audited = audit is not None and any(r.kind is OpKind.PUT or r.deleted > 0 for r in result.results)
        return TxnOut(
            succeeded=result.succeeded, revision=result.revision, results=[result_out(r) for r in result.results]
        )

    # --------------------------------------------------------------------------------------- leases

    def _ttl(self, ttl: float) -> float:
        if not math.isfinite(ttl) or ttl <= 0 or ttl > MAX_TTL_SECONDS:
            raise InvalidRequestError(
                f"ttl must be a number of seconds in (0, {MAX_TTL_SECONDS}]", code="invalid_ttl", field="ttl"
            )
        return float(ttl)

    def _lease_tenant(self, caller: Caller, verb: str, tenant: str | None) -> str:
        return self._tenant(caller, verb, tenant, Resource.LEASES)

    async def grant(self, caller: Caller, ttl: float, tenant: str | None) -> LeaseOut:
        """A new lease."""
        name = self._lease_tenant(caller, Verb.CREATE, tenant)
        now = self._clock.now()
        lease = await self._store.grant_lease(
            name, self._ttl(ttl), now, caller.entry(now, "leases.create", "leases", name)
        )
        caller.audited = True
        return LeaseOut(id=lease.id, ttl=lease.ttl, expires_at=lease.expires_at, keys=list(lease.keys))

    async def keepalive(self, caller: Caller, lease_id: int, tenant: str | None) -> LeaseOut:
        """Renew a live lease; 404 ``lease_not_found`` once it expired."""
        name = self._lease_tenant(caller, Verb.UPDATE, tenant)
        now = self._clock.now()
        lease = await self._store.keepalive(
            name, lease_id, now, caller.entry(now, "leases.keepalive", f"leases/{lease_id}", name)
        )
        caller.audited = True
        return LeaseOut(id=lease.id, ttl=lease.ttl, expires_at=lease.expires_at, keys=list(lease.keys))

    async def get_lease(self, caller: Caller, lease_id: int, tenant: str | None) -> LeaseOut:
        """A live lease with its keys."""
        name = self._lease_tenant(caller, Verb.GET, tenant)
        lease = await self._store.get_lease(name, lease_id, self._clock.now())
        if lease is None:
            raise NotFoundError(f"lease {lease_id} not found", code="lease_not_found")
        return LeaseOut(id=lease.id, ttl=lease.ttl, expires_at=lease.expires_at, keys=list(lease.keys))

    async def revoke(self, caller: Caller, lease_id: int, tenant: str | None) -> LeaseRevoked:
        """End a lease now; its keys are deleted in one revision."""
        name = self._lease_tenant(caller, Verb.DELETE, tenant)
        now = self._clock.now()
        revision = await self._store.revoke_lease(
            name, lease_id, now, caller.entry(now, "leases.revoke", f"leases/{lease_id}", name)
        )
        caller.audited = True
        return LeaseRevoked(revision=revision)

    # ---------------------------------------------------------------------------------------- watch

    async def open_watch(
        self, caller: Caller, prefix: str, tenant: str | None, from_revision: int | None, *, exact: bool
    ) -> AsyncIterator[bytes]:
        """Check a watch request (4xx now, compacted included) and return its SSE stream.

        ``exact``: only ``prefix`` itself (a single-key watch), not the keys under it.
        """
        name = self._tenant(caller, Verb.GET if exact else Verb.LIST, tenant)
        if exact:
            _key(prefix)
        else:
            problem = check_prefix(prefix)
            if problem is not None:
                raise InvalidRequestError(problem, code="invalid_key", field="prefix")
        start = _revision(from_revision, "from_revision")
        if start is None:
            start = await self._store.revision() + 1
        await self._store.events(name, prefix, start, 1)  # raises CompactedError now, before the stream starts
        return self._stream(name, prefix, start, exact)

    async def _stream(self, tenant: str, prefix: str, start: int, exact: bool) -> AsyncIterator[bytes]:
        loop = asyncio.get_running_loop()
        next_revision, quiet_since = start, loop.time()
        yield f": watching from revision {start}\n\n".encode()
        while True:
            events = await self._store.events(tenant, prefix, next_revision, WATCH_BATCH)
            chunks = [_sse(ev) for ev in events if not exact or ev.key == prefix]
            if events:
                next_revision = events[-1].revision + 1
            if chunks:
                yield b"".join(chunks)
                quiet_since = loop.time()
            elif loop.time() - quiet_since >= HEARTBEAT_SECONDS:
                yield b": heartbeat\n\n"
                quiet_since = loop.time()
            if len(events) < WATCH_BATCH:
                await asyncio.sleep(WATCH_POLL_SECONDS)

    # -------------------------------------------------------------------------------- housekeeping

    async def sweep(self) -> int:
        """Delete the keys of expired leases (each a recorded delete revision); how many leases ended."""
        return await self._store.expire_leases(self._clock.now())


def _sse(ev: Event) -> bytes:
    data = EventOut(revision=ev.revision, type=ev.type.value, key=ev.key, kv=_maybe(ev.kv), cause=ev.cause)
    return f"id: {ev.revision}\nevent: {ev.type.value}\ndata: {data.model_dump_json()}\n\n".encode()
