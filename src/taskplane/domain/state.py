"""The state API's model: keys per tenant, revisions, compare-then-ops transactions, leases, events (pure).

    txn(compares, success ops, failure ops)
        every compare holds?  --yes--> success ops   --no--> failure ops      (all or nothing, one revision)
    each write (put, delete, delete_prefix, a lease expiring) bumps the store-wide revision once per txn;
    an entry carries create_revision, mod_revision, version (1 on create, +1 per put) and its lease

etcd's semantics (revisions, Txn compare/then/else, leases), Nomad Variables' CAS results (ok / conflict).
Keys are UTF-8 paths per tenant; ``/`` is allowed, empty, ``.`` and ``..`` segments are not.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from taskplane.errors import NotFoundError

MAX_KEY_BYTES = 512
DEFAULT_MAX_VALUE_BYTES = 1 << 20
DEFAULT_MAX_OPS = 128


def check_key(key: str) -> str | None:
    """Why ``key`` is not a valid key, or ``None``."""
    if not key:
        return "a key must not be empty"
    try:
        size = len(key.encode("utf-8"))
    except UnicodeEncodeError:
        return "a key must be valid UTF-8"
    if size > MAX_KEY_BYTES:
        return f"a key is at most {MAX_KEY_BYTES} bytes of UTF-8 (this one is {size})"
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in key):
        return "a key must not contain NUL or other control characters"
    if key.startswith("/") or key.endswith("/"):
        return "a key must not start or end with '/'"
    for segment in key.split("/"):
        if segment in ("", ".", ".."):
            return "a key must not have empty, '.' or '..' segments"
    return None


def check_prefix(prefix: str) -> str | None:
    """Why ``prefix`` is not a valid listing prefix (empty means every key), or ``None``."""
    if prefix == "":
        return None
    if len(prefix.encode("utf-8", "surrogatepass")) > MAX_KEY_BYTES:
        return f"a prefix is at most {MAX_KEY_BYTES} bytes"
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in prefix):
        return "a prefix must not contain NUL or other control characters"
    if any(segment in (".", "..") for segment in prefix.split("/")[:-1]):
        return "a prefix must not have '.' or '..' segments"
    return None


@dataclass(frozen=True, slots=True)
class KeyValue:
    """A live entry."""

    key: str
    value: Any  # JSON
    create_revision: int
    mod_revision: int
    version: int
    lease: int | None = None


class CompareTarget(enum.StrEnum):
    """What a compare looks at."""

    VALUE = "value"
    VERSION = "version"
    MOD_REVISION = "mod_revision"
    CREATE_REVISION = "create_revision"
    EXISTS = "exists"


class CompareOp(enum.StrEnum):
    """How a compare compares."""

    EQUAL = "equal"
    NOT_EQUAL = "not_equal"
    GREATER = "greater"
    LESS = "less"


@dataclass(frozen=True, slots=True)
class Compare:
    """``target(key) op operand``. A missing key has version, revisions 0, no value and ``exists`` false."""

    key: str
    target: CompareTarget
    op: CompareOp
    operand: Any


def evaluate(compare: Compare, found: KeyValue | None) -> bool:
    """Whether ``compare`` holds for the entry ``found`` (``None``: the key does not exist)."""
    if compare.target is CompareTarget.EXISTS:
        actual: Any = found is not None
    elif compare.target is CompareTarget.VALUE:
        if found is None:
            # etcd: a value compare on a missing key fails, whatever the op.
            return False
        actual = found.value
    elif found is None:
        actual = 0
    elif compare.target is CompareTarget.VERSION:
        actual = found.version
    elif compare.target is CompareTarget.MOD_REVISION:
        actual = found.mod_revision
    else:
        actual = found.create_revision
    operand = compare.operand
    if compare.op is CompareOp.EQUAL:
        return bool(actual == operand)
    if compare.op is CompareOp.NOT_EQUAL:
        return bool(actual != operand)
    try:
        if compare.op is CompareOp.GREATER:
            return bool(actual > operand)
        return bool(actual < operand)
    except TypeError:  # e.g. a JSON object against a number: not ordered, so the compare fails
        return False


class OpKind(enum.StrEnum):
    """What an op does."""

    PUT = "put"
    GET = "get"
    DELETE = "delete"
    DELETE_PREFIX = "delete_prefix"


@dataclass(frozen=True, slots=True)
class Op:
    """One operation of a transaction branch. ``key`` is the prefix for ``delete_prefix``."""

    kind: OpKind
    key: str
    value: Any = None  # put
    lease: int | None = None  # put


@dataclass(frozen=True, slots=True)
class Txn:
    """Compares, then the success ops if all hold, else the failure ops."""

    compares: Sequence[Compare] = ()
    success: Sequence[Op] = ()
    failure: Sequence[Op] = ()


@dataclass(frozen=True, slots=True)
class OpResult:
    """What one op did.

    ``kv``: for a get the entry (None: missing), for a put the new entry; ``prev``: the entry a put or delete
    replaced; ``deleted``: how many keys a delete removed.
    """

    kind: OpKind
    key: str
    kv: KeyValue | None = None
    prev: KeyValue | None = None
    deleted: int = 0


@dataclass(frozen=True, slots=True)
class TxnResult:
    """Which branch ran, the store's revision after it, and each op's result in order."""

    succeeded: bool
    revision: int
    results: tuple[OpResult, ...] = ()


class EventType(enum.StrEnum):
    """What happened to a key at a revision."""

    PUT = "put"
    DELETE = "delete"


@dataclass(frozen=True, slots=True)
class Event:
    """A change at ``revision``: the entry after a put, or the key's tombstone (``kv`` holds the key only)."""

    revision: int
    type: EventType
    key: str
    kv: KeyValue | None
    cause: str = ""  # "" for a request, "lease_expired" for an expiry


@dataclass(frozen=True, slots=True)
class Lease:
    """A time-to-live that keys attach to; when it expires, they are deleted (a recorded revision)."""

    id: int
    tenant: str
    ttl: float
    expires_at: datetime
    keys: tuple[str, ...] = field(default_factory=tuple)


@dataclass(frozen=True, slots=True)
class KVPage:
    """A range of entries in key order and the key to continue after (``None`` at the end)."""

    items: tuple[KeyValue, ...]
    revision: int  # the revision the page was read at
    next_key: str | None


def ops_of(txn: Txn) -> Mapping[str, int]:
    """Counts of ops per branch (for limits)."""
    return {"compares": len(txn.compares), "success": len(txn.success), "failure": len(txn.failure)}


def apply_ops(
    ops: Sequence[Op],
    initial: Mapping[str, KeyValue | None],
    new_revision: int,
    value_of: Callable[[int], Any],
    lease_live: Callable[[int], bool],
    under: Callable[[str], Mapping[str, KeyValue]],
) -> tuple[tuple[OpResult, ...], dict[str, KeyValue | None]]:
    """Apply one branch's ops in order to an overlay of the touched keys; (every op's result, what changed).

    ``initial`` holds every key the ops name (``None``: absent); ``value_of(i)`` is the value of put ``i``;
    ``lease_live(id)`` says whether a put may attach that lease (else ``NotFoundError`` ``lease_not_found``);
    ``under(prefix)`` gives the live entries under a ``delete_prefix``. A get sees the branch's own earlier
    writes, and every put gets ``new_revision``. The changes are the keys whose entry differs from ``initial``
    at the end (the new entry, or ``None``: deleted), in key order: a key created and deleted again is not one.
    """
    start: dict[str, KeyValue | None] = dict(initial)
    current = dict(start)
    out: list[OpResult] = []
    for i, op in enumerate(ops):
        if op.kind is OpKind.GET:
            out.append(OpResult(OpKind.GET, op.key, kv=current[op.key]))
        elif op.kind is OpKind.PUT:
            if op.lease is not None and not lease_live(op.lease):
                raise NotFoundError(f"lease {op.lease} not found", code="lease_not_found")
            prev = current[op.key]
            entry = KeyValue(
                key=op.key,
                value=value_of(i),
                create_revision=new_revision if prev is None else prev.create_revision,
                mod_revision=new_revision,
                version=1 if prev is None else prev.version + 1,
                lease=op.lease,
            )
            current[op.key] = entry
            out.append(OpResult(OpKind.PUT, op.key, kv=entry, prev=prev))
        elif op.kind is OpKind.DELETE:
            prev = current[op.key]
            current[op.key] = None
            out.append(OpResult(OpKind.DELETE, op.key, prev=prev, deleted=0 if prev is None else 1))
        else:
            for key, stored in under(op.key).items():
                if key not in start:
                    start[key] = current[key] = stored
            doomed = [k for k, v in current.items() if v is not None and k.startswith(op.key)]
            for key in doomed:
                current[key] = None
            out.append(OpResult(OpKind.DELETE_PREFIX, op.key, deleted=len(doomed)))
    return tuple(out), {k: current[k] for k in sorted(k for k, v in current.items() if v != start[k])}
