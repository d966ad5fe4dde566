"""``RedisKVStore``: the state API's ``KVStore`` port on Redis (standalone or Cluster) with Lua scripts.

    every key of tenant T lives under  <prefix>:{<T quoted>}:...   (one hash tag: one Cluster slot per tenant)
        :meta        hash   rev (the tenant's revision), seq (bumped by every mutation), compacted
        :kv          hash   key -> [value JSON text, create_revision, mod_revision, version, lease or 0]
        :idx         zset   every key, score 0 (ZRANGEBYLEX: UTF-8 byte order == code point order)
        :hist        zset   [rev, key, "put"|"delete", value JSON text, create, version, lease, cause] by rev
        :leases      hash   lease id -> "<ttl in microseconds> <ttl>"
        :lexp        zset   lease id by expiry (microseconds since the epoch)
        :lk:<id>     set    the keys attached to lease <id>
    <prefix>:tenants      set of tenants with state (the sweeper, ``compact`` and ``revision`` walk it)
    <prefix>:lease_seq    counter: lease ids, unique across tenants and never reused

Every method is one Lua script on the tenant's slot (atomic on one node). A transaction is optimistic:

    SNAP script   the live entries of the named keys and delete_prefix prefixes, which named leases are live,
                  how many due leases have keys, the tenant's ``seq`` and revision
    (Python)      compares with ``domain.state.evaluate``, ops in order on an overlay (as ``SqlKVStore``)
    COMMIT script if ``seq`` is unchanged: record the due expiries (a revision each), then the changed keys at
                  one new revision; else nothing, and the transaction starts again from SNAP

so the compares see exactly the domain's semantics and a transaction applies on the state it read.
Revisions are PER TENANT: ``revision()`` is the highest over the tenants, ``compact(keep_from)`` applies
``keep_from`` to every tenant's history and returns the lowest oldest-kept revision over the tenants.
The audit callable runs after a change succeeded, NOT in the same transaction (see docs/state-redis.md).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import orjson
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from taskplane.domain.audit import AuditEntry
from taskplane.domain.state import (
    Event,
    EventType,
    KeyValue,
    KVPage,
    Lease,
    OpKind,
    OpResult,
    Txn,
    TxnResult,
    apply_ops,
    evaluate,
)
from taskplane.errors import CompactedError, InvalidRequestError, NotFoundError, UnavailableError
from taskplane.services.ports import KVLimits, KVStore
from taskplane.storage.kv_checks import check_txn, checked_key, checked_prefix, encode_value

AuditSink = Callable[[list[AuditEntry]], Awaitable[None]]
"""Receives the audit entry of a mutation after the change succeeded (not atomically with it)."""

CAUSE_EXPIRED = "lease_expired"
INLINE_EXPIRY_LIMIT = 1000
MAX_ATTEMPTS = 10_000
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_US = timedelta(microseconds=1)

# ------------------------------------------------------------------------------------------ scripts

_PRELUDE = """
local META = KEYS[1]
local B = string.sub(META, 1, -6)
local KV, IDX, HIST, LEASES, LEXP = B..':kv', B..':idx', B..':hist', B..':leases', B..':lexp'
local function lk(id) return B..':lk:'..id end
local function meta(f) local v = redis.call('HGET', META, f); if v then return tonumber(v) end; return 0 end
local function lease_live(id, now)
  local s = redis.call('ZSCORE', LEXP, id)
  return s ~= false and s ~= nil and tonumber(s) > now
end
local function live_entry(key, now)
  local e = redis.call('HGET', KV, key)
  if not e then return false end
  local lease = cjson.decode(e)[5]
  if lease ~= 0 and not lease_live(lease, now) then return false end
  return e
end
local function end_lease(id, rev, cause)
  local keys = redis.call('SMEMBERS', lk(id))
  redis.call('DEL', lk(id))
  redis.call('HDEL', LEASES, id)
  redis.call('ZREM', LEXP, id)
  if #keys == 0 then return rev end
  rev = rev + 1
  table.sort(keys)
  for _, k in ipairs(keys) do
    redis.call('HDEL', KV, k)
    redis.call('ZREM', IDX, k)
    redis.call('ZADD', HIST, rev, cjson.encode({rev, k, 'delete', '', 0, 0, 0, cause}))
  end
  redis.call('HSET', META, 'rev', rev)
  return rev
end
local function expire_due(now, limit)
  local rev = meta('rev')
  local due = redis.call('ZRANGEBYSCORE', LEXP, '-inf', now, 'LIMIT', 0, limit)
  for _, id in ipairs(due) do rev = end_lease(id, rev, 'lease_expired') end
  return rev, #due
end
local function scan(p, after, fn)
  local start
  if after ~= '' then start = '(' .. after elseif p == '' then start = '-' else start = '[' .. p end
  while true do
    local keys = redis.call('ZRANGEBYLEX', IDX, start, '+', 'LIMIT', 0, 256)
    if #keys == 0 then return end
    for _, k in ipairs(keys) do
      if string.sub(k, 1, #p) ~= p then return end
      if fn(k) then return end
    end
    start = '(' .. keys[#keys]
  end
end
"""

_SNAP = """
local now = tonumber(ARGV[1])
local i = 2
local n = tonumber(ARGV[i]); i = i + 1
local found = {}
for j = 1, n do
  local k = ARGV[i]; i = i + 1
  local e = live_entry(k, now)
  if e then found[#found + 1] = k; found[#found + 1] = e end
end
n = tonumber(ARGV[i]); i = i + 1
local under = {}
for j = 1, n do
  local p = ARGV[i]; i = i + 1
  scan(p, '', function(k)
    local e = live_entry(k, now)
    if e then under[#under + 1] = k; under[#under + 1] = e end
    return false
  end)
end
n = tonumber(ARGV[i]); i = i + 1
local leases = {}
for j = 1, n do
  local id = ARGV[i]; i = i + 1
  if lease_live(id, now) then leases[#leases + 1] = id end
end
local due = 0
for _, id in ipairs(redis.call('ZRANGEBYSCORE', LEXP, '-inf', now, 'LIMIT', 0, tonumber(ARGV[i]))) do
  if redis.call('SCARD', lk(id)) > 0 then due = due + 1 end
end
return {meta('seq'), meta('rev'), meta('compacted'), found, under, leases, due}
"""

_COMMIT = """
if meta('seq') ~= tonumber(ARGV[1]) then return -1 end
local now = tonumber(ARGV[2])
local rev = expire_due(now, tonumber(ARGV[5]))
local n = tonumber(ARGV[4])
if n > 0 then
  rev = tonumber(ARGV[3])
  local i = 6
  for j = 1, n do
    local k, e, lease, m = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3]
    i = i + 4
    local old = redis.call('HGET', KV, k)
    if old then
      local ol = cjson.decode(old)[5]
      if ol ~= 0 then redis.call('SREM', lk(ol), k) end
    end
    if e == '' then
      redis.call('HDEL', KV, k)
      redis.call('ZREM', IDX, k)
    else
      redis.call('HSET', KV, k, e)
      redis.call('ZADD', IDX, 0, k)
      if lease ~= '0' then redis.call('SADD', lk(lease), k) end
    end
    redis.call('ZADD', HIST, rev, m)
  end
  redis.call('HSET', META, 'rev', rev)
end
redis.call('HINCRBY', META, 'seq', 1)
return rev
"""

# ARGV: now, prefix, exact ('1': the key itself), after ('' for none), limit, revision ('' for the current one)
_READ = """
local now = tonumber(ARGV[1])
local p, exact, after, limit = ARGV[2], ARGV[3] == '1', ARGV[4], tonumber(ARGV[5])
local current, compacted = meta('rev'), meta('compacted')
local out = {}
local at = current
if ARGV[6] ~= '' then at = tonumber(ARGV[6]) end
if at > current or (at < current and at <= compacted) then return {current, compacted, out} end
if at == current then
  if exact then
    local e = live_entry(p, now)
    if e then out[1] = p; out[2] = e end
  else
    scan(p, after, function(k)
      local e = live_entry(k, now)
      if e then out[#out + 1] = k; out[#out + 1] = e end
      return #out >= 2 * (limit + 1)
    end)
  end
  return {current, compacted, out}
end
local newest = {}
for _, m in ipairs(redis.call('ZRANGEBYSCORE', HIST, '-inf', at)) do
  local r = cjson.decode(m)
  local k = r[2]
  if (exact and k == p) or ((not exact) and string.sub(k, 1, #p) == p) then newest[k] = {r[3], m} end
end
for k, v in pairs(newest) do
  if v[1] == 'put' then out[#out + 1] = k; out[#out + 1] = v[2] end
end
return {current, compacted, out}
"""

_EVENTS = """
local from, p, limit = tonumber(ARGV[1]), ARGV[2], tonumber(ARGV[3])
local compacted = meta('compacted')
if from <= compacted then return {0, compacted, {}} end
local out = {}
local stop = nil
local offset = 0
while true do
  local ms = redis.call('ZRANGEBYSCORE', HIST, from, '+inf', 'WITHSCORES', 'LIMIT', offset, 256)
  if #ms == 0 then break end
  for j = 1, #ms, 2 do
    local r = tonumber(ms[j + 1])
    if stop and r > stop then return {1, compacted, out} end
    local m = ms[j]
    if string.sub(cjson.decode(m)[2], 1, #p) == p then
      out[#out + 1] = m
      if (not stop) and #out >= limit then stop = r end
    end
  end
  offset = offset + 256
end
return {1, compacted, out}
"""

_GRANT = """
redis.call('HSET', LEASES, ARGV[1], ARGV[2])
redis.call('ZADD', LEXP, ARGV[3], ARGV[1])
redis.call('HINCRBY', META, 'seq', 1)
return 1
"""

_LEASE_INFO = """
local function info(id)
  local v = redis.call('HGET', LEASES, id)
  local keys = redis.call('SMEMBERS', lk(id))
  table.sort(keys)
  return {v, redis.call('ZSCORE', LEXP, id), keys}
end
"""

_KEEPALIVE = (
    _LEASE_INFO
    + """
local id, now = ARGV[1], tonumber(ARGV[2])
if not lease_live(id, now) then return false end
local v = redis.call('HGET', LEASES, id)
local us = tonumber(string.match(v, '^(%S+)'))
redis.call('ZADD', LEXP, now + us, id)
redis.call('HINCRBY', META, 'seq', 1)
return info(id)
"""
)

_GET_LEASE = (
    _LEASE_INFO
    + """
if not lease_live(ARGV[1], tonumber(ARGV[2])) then return false end
return info(ARGV[1])
"""
)

_REVOKE = """
if not lease_live(ARGV[1], tonumber(ARGV[2])) then return -1 end
local rev = end_lease(ARGV[1], meta('rev'), '')
redis.call('HINCRBY', META, 'seq', 1)
return rev
"""

_EXPIRE = """
local _, n = expire_due(tonumber(ARGV[1]), tonumber(ARGV[2]))
if n > 0 then redis.call('HINCRBY', META, 'seq', 1) end
return n
"""

_COMPACT = """
local current, compacted = meta('rev'), meta('compacted')
local target = math.min(tonumber(ARGV[1]) - 1, current)
if target <= compacted then return compacted + 1 end
local rows = redis.call('ZRANGEBYSCORE', HIST, '-inf', target)
local newest = {}
for _, m in ipairs(rows) do
  local d = cjson.decode(m)
  local cur = newest[d[2]]
  if cur then redis.call('ZREM', HIST, cur[1]) end
  newest[d[2]] = {m, d[3]}
end
for _, v in pairs(newest) do
  if v[2] == 'delete' then redis.call('ZREM', HIST, v[1]) end
end
redis.call('HSET', META, 'compacted', target)
return target + 1
"""

_PURGE = """
for _, id in ipairs(redis.call('HKEYS', LEASES)) do redis.call('DEL', lk(id)) end
redis.call('DEL', META, KV, IDX, HIST, LEASES, LEXP)
return 1
"""

_REVISION = """
return meta('rev')
"""


class _Script:
    """A Lua script run with EVALSHA (EVAL when the server does not have it yet)."""

    def __init__(self, body: str) -> None:
        self.text = _PRELUDE + body
        self.sha = hashlib.sha1(self.text.encode("utf-8"), usedforsecurity=False).hexdigest()


_S_SNAP, _S_COMMIT, _S_READ, _S_EVENTS = _Script(_SNAP), _Script(_COMMIT), _Script(_READ), _Script(_EVENTS)
_S_GRANT, _S_KEEPALIVE, _S_GET_LEASE = _Script(_GRANT), _Script(_KEEPALIVE), _Script(_GET_LEASE)
_S_REVOKE, _S_EXPIRE, _S_COMPACT = _Script(_REVOKE), _Script(_EXPIRE), _Script(_COMPACT)
_S_PURGE, _S_REVISION = _Script(_PURGE), _Script(_REVISION)


class RedisKVStore:
    """``KVStore`` on a ``redis.asyncio.Redis`` or ``redis.asyncio.cluster.RedisCluster`` client.

    ``prefix`` namespaces every key (several stores, or tests, can share one Redis). ``audit``, when given,
    receives each mutation's audit entry after the change succeeded; the caller owns the client (``close``
    closes it only with ``owns_client=True``).
    """

    def __init__(
        self,
        client: Redis | RedisCluster,
        limits: KVLimits | None = None,
        audit: AuditSink | None = None,
        *,
        prefix: str = "tp",
        owns_client: bool = False,
    ) -> None:
        if not prefix or any(c in prefix for c in "{}"):
            raise ValueError("a key prefix must be non-empty and hold no '{' or '}'")
        self._client = client
        self._limits = limits or KVLimits()
        self._audit = audit
        self._prefix = prefix
        self._owns_client = owns_client
        self._closed = False

    @property
    def limits(self) -> KVLimits:
        """The limits this store enforces."""
        return self._limits

    # ------------------------------------------------------------------------------------- plumbing

    def _meta(self, tenant: str) -> str:
        return f"{self._prefix}:{{{quote(tenant, safe='')}}}:meta"

    @property
    def _tenants_key(self) -> str:
        return f"{self._prefix}:tenants"

    async def _run(self, script: _Script, tenant: str, *args: Any) -> Any:
        if self._closed:
            raise UnavailableError("the state store is closed")
        client: Any = self._client
        key = self._meta(tenant)
        try:
            try:
                return await client.evalsha(script.sha, 1, key, *args)
            except NoScriptError:
                return await client.eval(script.text, 1, key, *args)
        except (RedisConnectionError, RedisTimeoutError) as exc:
            raise UnavailableError(f"Redis is unavailable: {exc}") from exc
        except RedisError as exc:
            if "NOSCRIPT" in str(exc):
                try:
                    return await client.eval(script.text, 1, key, *args)
                except RedisError as again:
                    raise UnavailableError(f"Redis failed: {again}") from again
            raise UnavailableError(f"Redis failed: {exc}") from exc

    async def _command(self, *args: Any) -> Any:
        if self._closed:
            raise UnavailableError("the state store is closed")
        client: Any = self._client
        try:
            return await client.execute_command(*args)
        except RedisError as exc:
            raise UnavailableError(f"Redis failed: {exc}") from exc

    async def _register(self, tenant: str) -> None:
        """Record ``tenant`` in the tenant set before a mutation (so sweeps and compaction find it).

        Not cached: another process may have purged the tenant (and removed it from the set) since.
        """
        await self._command("SADD", self._tenants_key, tenant)

    async def _tenants(self) -> list[str]:
        return sorted(_text(t) for t in await self._command("SMEMBERS", self._tenants_key))

    async def _record(self, audit: AuditEntry | None) -> None:
        if audit is not None and self._audit is not None:
            await self._audit([audit])

    # ------------------------------------------------------------------------------------------ txn

    async def txn(self, tenant: str, txn: Txn, now: datetime, audit: AuditEntry | None = None) -> TxnResult:
        """Evaluate the compares and apply one branch atomically (optimistic: SNAP, then COMMIT if unchanged).

        Errors as ``SqlKVStore.txn``: ``InvalidRequestError``/``PayloadTooLargeError`` before touching Redis,
        ``NotFoundError`` (``lease_not_found``) when a put names a lease that is not live (nothing written).
        """
        encoded = self._check_txn(txn)
        now_us = _micros(now)
        all_ops = (*txn.success, *txn.failure)
        single = sorted({c.key for c in txn.compares} | {o.key for o in all_ops if o.kind is not OpKind.DELETE_PREFIX})
        prefixes = sorted({o.key for o in all_ops if o.kind is OpKind.DELETE_PREFIX})
        leases = sorted({o.lease for o in all_ops if o.kind is OpKind.PUT and o.lease is not None})
        if any(o.kind is not OpKind.GET for o in all_ops):
            await self._register(tenant)
        for _ in range(MAX_ATTEMPTS):
            raw = await self._run(
                _S_SNAP,
                tenant,
                now_us,
                len(single),
                *single,
                len(prefixes),
                *prefixes,
                len(leases),
                *leases,
                INLINE_EXPIRY_LIMIT,
            )
            seq, revision, due = int(raw[0]), int(raw[1]), int(raw[6])
            found = _entries(raw[3])
            under = _entries(raw[4])
            live_leases = {int(x) for x in raw[5]}
            succeeded = all(evaluate(c, found.get(c.key)) for c in txn.compares)
            ops = txn.success if succeeded else txn.failure
            if not any(op.kind is not OpKind.GET for op in ops):
                return TxnResult(
                    succeeded, revision, tuple(OpResult(OpKind.GET, o.key, kv=found.get(o.key)) for o in ops)
                )
            new_revision = revision + due + 1
            out, changes = apply_ops(
                ops,
                {k: found.get(k) for k in single},
                new_revision,
                partial(_put_value, encoded, succeeded),
                live_leases.__contains__,
                partial(_under, under),
            )
            changed = list(changes)
            if not changed and due == 0:
                return TxnResult(succeeded, revision, out)
            args: list[Any] = []
            for key in changed:
                args += _change_args(key, changes[key], new_revision)
            after = int(
                await self._run(_S_COMMIT, tenant, seq, now_us, new_revision, len(changed), INLINE_EXPIRY_LIMIT, *args)
            )
            if after < 0:
                continue  # the tenant changed since SNAP: read again
            result = TxnResult(succeeded, after, out)
            if changed:
                await self._record(audit)
            return result
        raise UnavailableError("the state store is too contended: the transaction could not commit")

    def _check_txn(self, txn: Txn) -> dict[tuple[bool, int], str]:
        return check_txn(txn, self._limits)

    def _encode(self, value: Any) -> str:
        return encode_value(value, self._limits)

    # -------------------------------------------------------------------------------------- reading

    async def get(self, tenant: str, key: str, now: datetime, revision: int | None = None) -> KeyValue | None:
        """The entry of ``key`` now, or at ``revision`` (the tenant's revision) if given."""
        checked_key(key)
        page = await self._read(tenant, key, now, 1, None, revision, exact=True)
        return page.items[0] if page.items else None

    async def range(
        self, tenant: str, prefix: str, now: datetime, limit: int, after: str | None = None, revision: int | None = None
    ) -> KVPage:
        """Entries under ``prefix`` in key order after ``after``, at most ``limit``; ``revision`` is the tenant's."""
        checked_prefix(prefix)
        if limit < 1:
            raise InvalidRequestError(f"limit must be at least 1, got {limit}", code="invalid_limit")
        return await self._read(tenant, prefix, now, limit, after, revision, exact=False)

    async def _read(
        self,
        tenant: str,
        prefix: str,
        now: datetime,
        limit: int,
        after: str | None,
        revision: int | None,
        *,
        exact: bool,
    ) -> KVPage:
        start = after if after is not None and after >= prefix else ""
        raw = await self._run(
            _S_READ,
            tenant,
            _micros(now),
            prefix,
            "1" if exact else "0",
            start,
            limit,
            "" if revision is None else revision,
        )
        current, compacted = int(raw[0]), int(raw[1])
        if revision is not None:
            if revision > current:
                raise InvalidRequestError(
                    f"revision {revision} is in the future (the tenant is at {current})", code="future_revision"
                )
            if revision < current and revision <= compacted:
                raise _compacted(revision, compacted)
        entries = _entries(raw[2])
        items = sorted(
            (e for k, e in entries.items() if after is None or k > after), key=lambda e: e.key.encode("utf-8")
        )
        next_key = items[limit - 1].key if len(items) > limit else None
        return KVPage(tuple(items[:limit]), current if revision is None else revision, next_key)

    async def revision(self) -> int:
        """The highest revision over the tenants (revisions are per tenant on Redis; 0 before any write)."""
        revisions = [await self.tenant_revision(t) for t in await self._tenants()]
        return max(revisions, default=0)

    async def tenant_revision(self, tenant: str) -> int:
        """The revision of ``tenant`` (what its ``txn`` results, events and past reads count in)."""
        return int(await self._run(_S_REVISION, tenant))

    async def events(self, tenant: str, prefix: str, from_revision: int, limit: int) -> list[Event]:
        """Changes under ``prefix`` from ``from_revision`` on, in (revision, key) order; whole revisions only."""
        checked_prefix(prefix)
        if limit < 1:
            raise InvalidRequestError(f"limit must be at least 1, got {limit}", code="invalid_limit")
        raw = await self._run(_S_EVENTS, tenant, from_revision, prefix, limit)
        if int(raw[0]) == 0:
            raise _compacted(from_revision, int(raw[1]))
        rows = [orjson.loads(_text(m)) for m in raw[2]]
        rows.sort(key=lambda r: (int(r[0]), r[1].encode("utf-8")))
        return [_event(r) for r in rows]

    # --------------------------------------------------------------------------------------- leases

    async def grant_lease(self, tenant: str, ttl: float, now: datetime, audit: AuditEntry | None = None) -> Lease:
        """A new lease expiring at ``now + ttl``; ``InvalidRequestError`` (``invalid_ttl``) unless ttl > 0."""
        span = _ttl(ttl)
        expires_at = now + span
        await self._register(tenant)
        lease_id = int(await self._command("INCR", f"{self._prefix}:lease_seq"))
        await self._run(_S_GRANT, tenant, lease_id, f"{span // _US} {float(ttl)!r}", _micros(expires_at))
        await self._record(audit)
        return Lease(lease_id, tenant, float(ttl), expires_at)

    async def keepalive(self, tenant: str, lease_id: int, now: datetime, audit: AuditEntry | None = None) -> Lease:
        """Push a live lease's expiry to ``now + ttl``; ``NotFoundError`` (``lease_not_found``) otherwise."""
        raw = await self._run(_S_KEEPALIVE, tenant, lease_id, _micros(now))
        if not raw:
            raise NotFoundError(f"lease {lease_id} not found", code="lease_not_found")
        lease = _lease(lease_id, tenant, raw)
        await self._record(audit)
        return lease

    async def get_lease(self, tenant: str, lease_id: int, now: datetime) -> Lease | None:
        """A live lease of ``tenant`` with the keys attached to it, or ``None``."""
        raw = await self._run(_S_GET_LEASE, tenant, lease_id, _micros(now))
        return _lease(lease_id, tenant, raw) if raw else None

    async def revoke_lease(self, tenant: str, lease_id: int, now: datetime, audit: AuditEntry | None = None) -> int:
        """Delete a live lease and its keys (one revision when it had keys); the tenant's revision after it."""
        revision = int(await self._run(_S_REVOKE, tenant, lease_id, _micros(now)))
        if revision < 0:
            raise NotFoundError(f"lease {lease_id} not found", code="lease_not_found")
        await self._record(audit)
        return revision

    async def expire_leases(self, now: datetime, limit: int = 1000) -> int:
        """End leases expired at ``now`` tenant by tenant (one script per tenant), ``limit`` at most."""
        ended = 0
        now_us = _micros(now)
        for tenant in await self._tenants():
            if ended >= limit:
                break
            ended += int(await self._run(_S_EXPIRE, tenant, now_us, limit - ended))
        return ended

    # ----------------------------------------------------------------------------------- compaction

    async def compact(self, keep_from: int) -> int:
        """Drop each tenant's history older than ``keep_from``; the lowest oldest-kept revision over tenants."""
        kept = [int(await self._run(_S_COMPACT, t, keep_from)) for t in await self._tenants()]
        return min(kept, default=1)

    async def purge_tenant(self, tenant: str) -> None:
        """Remove every key, lease and history entry of ``tenant``."""
        await self._run(_S_PURGE, tenant)
        await self._command("SREM", self._tenants_key, tenant)

    async def purge_all(self) -> None:
        """Remove everything under this store's prefix that it knows of (every tenant, the counters)."""
        for tenant in await self._tenants():
            await self.purge_tenant(tenant)
        await self._command("DEL", self._tenants_key)
        await self._command("DEL", f"{self._prefix}:lease_seq")

    # ---------------------------------------------------------------------------------- lifecycle

    async def ping(self) -> None:
        """Raise ``UnavailableError`` unless Redis answers."""
        client: Any = self._client
        try:
            await client.ping()
        except RedisError as exc:
            raise UnavailableError(f"Redis is unavailable: {exc}") from exc

    async def close(self) -> None:
        """Stop serving calls (and close the client when this store owns it)."""
        if self._closed:
            return
        self._closed = True
        if self._owns_client:
            client: Any = self._client
            await client.aclose()


# ------------------------------------------------------------------------------------------- helpers


def _text(value: Any) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def _micros(moment: datetime) -> int:
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return (moment - _EPOCH) // _US


def _entries(flat: Sequence[Any]) -> dict[str, KeyValue]:
    out: dict[str, KeyValue] = {}
    for i in range(0, len(flat), 2):
        key = _text(flat[i])
        data = orjson.loads(_text(flat[i + 1]))
        if len(data) == 5:  # a live entry: [value, create, mod, version, lease]
            value, create, mod, version, lease = data
        else:  # a history row: [rev, key, type, value, create, version, lease, cause]
            mod, _, _, value, create, version, lease, _ = data
        out[key] = KeyValue(key, orjson.loads(value), int(create), int(mod), int(version), int(lease) or None)
    return out


def _change_args(key: str, entry: KeyValue | None, revision: int) -> list[Any]:
    if entry is None:
        member = orjson.dumps([revision, key, "delete", "", 0, 0, 0, ""])
        return [key, "", 0, member]
    text = orjson.dumps(entry.value).decode("utf-8")
    lease = entry.lease or 0
    stored = orjson.dumps([text, entry.create_revision, entry.mod_revision, entry.version, lease])
    member = orjson.dumps([revision, key, "put", text, entry.create_revision, entry.version, lease, ""])
    return [key, stored, lease, member]


def _event(row: list[Any]) -> Event:
    revision, key, kind, value, create, version, lease, cause = row
    revision = int(revision)
    if kind == "put":
        entry = KeyValue(key, orjson.loads(value), int(create), revision, int(version), int(lease) or None)
        return Event(revision, EventType.PUT, key, entry, cause)
    return Event(revision, EventType.DELETE, key, KeyValue(key, None, 0, revision, 0), cause)


def _lease(lease_id: int, tenant: str, raw: Sequence[Any]) -> Lease:
    ttl = float(_text(raw[0]).split(" ", 1)[1])
    expires_at = _EPOCH + timedelta(microseconds=int(float(_text(raw[1]))))
    return Lease(lease_id, tenant, ttl, expires_at, tuple(_text(k) for k in raw[2]))


def _ttl(ttl: float) -> timedelta:
    if isinstance(ttl, bool) or not isinstance(ttl, int | float) or not math.isfinite(ttl) or ttl <= 0:
        raise InvalidRequestError(f"a lease's ttl is a number of seconds > 0, got {ttl!r}", code="invalid_ttl")
    try:
        span = timedelta(seconds=ttl)
    except OverflowError:
        raise InvalidRequestError(f"ttl {ttl} is too large", code="invalid_ttl") from None
    if span < _US:
        raise InvalidRequestError(f"a lease's ttl is at least a microsecond, got {ttl!r}", code="invalid_ttl")
    return span


def _compacted(revision: int, compacted: int) -> CompactedError:
    oldest = compacted + 1
    return CompactedError(
        f"revision {revision} is compacted; the oldest revision kept is {oldest}", oldest_revision=oldest
    )


if TYPE_CHECKING:

    def _implements_the_port(store: RedisKVStore) -> KVStore:
        return store


def _put_value(encoded: dict[tuple[bool, int], str], succeeded: bool, index: int) -> Any:
    """The value of put ``index`` of the branch that runs."""
    return orjson.loads(encoded[(succeeded, index)])


def _under(snapshot: dict[str, KeyValue], prefix: str) -> dict[str, KeyValue]:
    """The snapshot's entries under ``prefix``."""
    return {k: v for k, v in snapshot.items() if k.startswith(prefix)}
