"""The state API as data: keys, listings, transactions, leases and watches as ``Call``s, and the watch's SSE.

Built like ``calls`` (no I/O here); ``Client.state`` and ``AsyncClient.state`` only send. A watch is one
streamed ``GET`` whose ``text/event-stream`` body this module decodes, and which the clients reopen when it
ends or drops::

    GET /platform/state?prefix=P&watch=true&from_revision=R     (or GET /platform/state/{key}?watch=true)
        |  ": watching from revision R"          comment: where a watch without from_revision started
        |  "id: 7" "event: put" "data: {...}"     one event per revision, in order
        v
    sse_messages(lines) --> SseMessage --> WatchCursor.accept --> EventOut, or None (comment, duplicate)
                                              |
                                              +-- next_revision: the from_revision of the next connection

Keys may contain ``/``: each segment is escaped and the ``/`` between them kept, and a key the server would
refuse (empty, ``.``/``..`` segments, control characters) is refused before anything is sent, so no key can
be turned into another path by URL normalisation.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Literal
from urllib.parse import quote

from pydantic import BaseModel, ValidationError

from taskplane.domain.state import check_key, check_prefix
from taskplane.errors import InternalError, InvalidRequestError
from taskplane.sdk.calls import Call, coerce, decode_model
from taskplane.sdk.problems import raise_for_problem
from taskplane.wire.state import (
    CompareIn,
    DeleteResult,
    EventOut,
    KeyList,
    KeyValueOut,
    LeaseCreate,
    LeaseOut,
    LeaseRevoked,
    OpIn,
    PutResult,
    TxnIn,
    TxnOut,
)

STATE = "/platform/state"
LEASES = "/platform/leases"

# The server sends a comment at least every 15 s; a watch that hears nothing for this long is reconnected.
WATCH_IDLE_SECONDS = 60.0
# Reconnect delays after watch connections that brought nothing: 0.25 s, doubling, at most this.
MAX_RECONNECT_DELAY = 5.0

Target = Literal["value", "version", "mod_revision", "create_revision", "exists"]
CompareOp = Literal["equal", "not_equal", "greater", "less", "==", "!=", ">", "<"]
CompareInput = CompareIn | Mapping[str, Any]
OpInput = OpIn | Mapping[str, Any]

_OPS = {"==": "equal", "!=": "not_equal", ">": "greater", "<": "less"}
_START = re.compile(r"^watching from revision (\d+)$")


# -- arguments ------------------------------------------------------------------------------------------------


def key_path(key: str) -> str:
    """``/platform/state/{key}``: each segment escaped, ``/`` kept; a key the server would refuse raises here."""
    problem = check_key(key) if isinstance(key, str) else "a key must be a string"
    if problem is not None:
        raise InvalidRequestError(problem, code="invalid_key", field="key")
    return f"{STATE}/{quote(key, safe='/')}"


def _prefix(prefix: str) -> str:
    problem = check_prefix(prefix) if isinstance(prefix, str) else "a prefix must be a string"
    if problem is not None:
        raise InvalidRequestError(problem, code="invalid_key", field="prefix")
    return prefix


def _tenant(tenant: str | None) -> tuple[tuple[str, str], ...]:
    return (("tenant", tenant),) if tenant is not None else ()


def _positive(name: str, value: int) -> str:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InvalidRequestError(f"{name} must be an integer >= 1", code="invalid_field", field=name)
    return str(value)


def _revision(name: str, value: int | None) -> tuple[tuple[str, str], ...]:
    return () if value is None else ((name, _positive(name, value)),)


def seconds(value: float | timedelta, what: str) -> float:
    """A TTL in seconds (a number or a ``timedelta``), > 0."""
    amount = value.total_seconds() if isinstance(value, timedelta) else value
    if isinstance(amount, bool) or not isinstance(amount, int | float) or not 0 < amount < float("inf"):
        raise InvalidRequestError(f"{what} must be a number of seconds > 0", code="invalid_field", field=what)
    return float(amount)


def encode_value(value: Any) -> bytes:
    """A value as the JSON body of a PUT (a pydantic model as its JSON)."""
    if isinstance(value, BaseModel):
        return value.model_dump_json().encode()
    try:
        return json.dumps(value, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode()
    except (TypeError, ValueError) as exc:
        raise InvalidRequestError(f"the value is not JSON: {exc}", code="invalid_value", field="value") from exc


# -- keys -----------------------------------------------------------------------------------------------------


def get_key(key: str, revision: int | None = None, tenant: str | None = None) -> Call[KeyValueOut]:
    """``GET /platform/state/{key}`` (404 ``not_found``; 410 ``compacted`` for a ``revision`` no longer kept)."""
    params = (*_revision("revision", revision), *_tenant(tenant))
    return Call("GET", key_path(key), decode_model(KeyValueOut), params=params)


def put_key(
    key: str,
    value: Any,
    *,
    if_match: int | None = None,
    create_only: bool = False,
    lease: int | None = None,
    ttl: float | timedelta | None = None,
    tenant: str | None = None,
) -> Call[PutResult]:
    """``PUT /platform/state/{key}``, the value as the body; 412 ``precondition_failed`` when a condition fails.

    ``if_match``: only if the key's mod_revision is this (``If-Match``); ``create_only``: only if the key does
    not exist (``If-None-Match: *``); ``lease``: attach to a lease; ``ttl``: make a lease of its own.
    """
    if if_match is not None and create_only:
        raise InvalidRequestError("if_match and create_only exclude each other", code="invalid_field")
    if lease is not None and ttl is not None:
        raise InvalidRequestError("lease and ttl exclude each other", code="invalid_field")
    headers: list[tuple[str, str]] = []
    if if_match is not None:
        headers.append(("If-Match", _positive("if_match", if_match)))
    if create_only:
        headers.append(("If-None-Match", "*"))
    params = [*_tenant(tenant)]
    if lease is not None:
        params.extend(_revision("lease", lease))
    if ttl is not None:
        params.append(("ttl", repr(seconds(ttl, "ttl"))))
    return Call(
        "PUT",
        key_path(key),
        decode_model(PutResult),
        params=tuple(params),
        body=encode_value(value),
        headers=tuple(headers),
    )


def delete_key(key: str, if_match: int | None = None, tenant: str | None = None) -> Call[DeleteResult]:
    """``DELETE /platform/state/{key}``: ``deleted`` 0 when it did not exist; 412 when ``if_match`` fails."""
    headers = (("If-Match", _positive("if_match", if_match)),) if if_match is not None else ()
    return Call("DELETE", key_path(key), decode_model(DeleteResult), params=_tenant(tenant), headers=headers)


def list_keys(
    prefix: str = "",
    limit: int = 100,
    after: str | None = None,
    revision: int | None = None,
    tenant: str | None = None,
) -> Call[KeyList]:
    """``GET /platform/state?prefix=``: one page in key order; ``next_key`` goes back as ``after``."""
    params: list[tuple[str, str]] = [("prefix", _prefix(prefix)), ("limit", str(limit))]
    if after is not None:
        params.append(("after", after))
    params.extend((*_revision("revision", revision), *_tenant(tenant)))
    return Call("GET", STATE, decode_model(KeyList), params=tuple(params))


# -- transactions ---------------------------------------------------------------------------------------------


class Compare:
    """Builders of a transaction's compares: ``Compare.mod_revision("jobs/a", "==", 7)``.

    ``op`` is ``equal``, ``not_equal``, ``greater``, ``less`` or ``==``, ``!=``, ``>``, ``<``.
    """

    @staticmethod
    def of(key: str, target: Target, op: CompareOp, value: Any) -> CompareIn:
        """``target(key) op value``."""
        fields = {"key": key, "target": target, "op": _OPS.get(op, op), "value": value}
        return coerce(CompareIn, fields, "compare")

    @staticmethod
    def value(key: str, op: CompareOp, value: Any) -> CompareIn:
        """Compare the key's JSON value."""
        return Compare.of(key, "value", op, value)

    @staticmethod
    def version(key: str, op: CompareOp, version: int) -> CompareIn:
        """Compare how many times the key was written since it was created (0: it does not exist)."""
        return Compare.of(key, "version", op, version)

    @staticmethod
    def mod_revision(key: str, op: CompareOp, revision: int) -> CompareIn:
        """Compare the revision of the key's last write."""
        return Compare.of(key, "mod_revision", op, revision)

    @staticmethod
    def create_revision(key: str, op: CompareOp, revision: int) -> CompareIn:
        """Compare the revision that created the key."""
        return Compare.of(key, "create_revision", op, revision)

    @staticmethod
    def exists(key: str, exists: bool = True) -> CompareIn:
        """Hold when the key exists (``exists=False``: when it does not)."""
        return Compare.of(key, "exists", "equal", exists)


class Op:
    """Builders of a transaction's ops: ``Op.put("jobs/a", {"n": 1})``, ``Op.delete_prefix("tmp/")``."""

    @staticmethod
    def put(key: str, value: Any, lease: int | None = None) -> OpIn:
        """Write ``value`` (attached to ``lease``, if given)."""
        fields: dict[str, Any] = {"op": "put", "key": key, "value": value}
        if lease is not None:
            fields["lease"] = lease
        return coerce(OpIn, fields, "op")

    @staticmethod
    def get(key: str) -> OpIn:
        """Read the key as the transaction sees it."""
        return coerce(OpIn, {"op": "get", "key": key}, "op")

    @staticmethod
    def delete(key: str) -> OpIn:
        """Delete the key."""
        return coerce(OpIn, {"op": "delete", "key": key}, "op")

    @staticmethod
    def delete_prefix(prefix: str) -> OpIn:
        """Delete every key under ``prefix``."""
        return coerce(OpIn, {"op": "delete_prefix", "key": prefix}, "op")


def _dumped(items: Iterable[BaseModel | Mapping[str, Any]]) -> list[Any]:
    return [item.model_dump(exclude_unset=True) if isinstance(item, BaseModel) else dict(item) for item in items]


def txn_request(
    compare: Iterable[CompareInput] = (), success: Iterable[OpInput] = (), failure: Iterable[OpInput] = ()
) -> TxnIn:
    """The ``TxnIn`` of compares and ops given as models (``Compare``, ``Op``) or mappings, validated here."""
    body = {"compare": _dumped(compare), "success": _dumped(success), "failure": _dumped(failure)}
    return coerce(TxnIn, body, "transaction")


def txn(request: TxnIn, tenant: str | None = None) -> Call[TxnOut]:
    """``POST /platform/state/transaction``: compares, then the success ops if all hold, else the failure ops."""
    body = request.model_dump_json(exclude_unset=True).encode()
    return Call("POST", f"{STATE}/transaction", decode_model(TxnOut), params=_tenant(tenant), body=body)


# -- leases ---------------------------------------------------------------------------------------------------


def _lease_path(lease_id: int, suffix: str = "") -> str:
    return f"{LEASES}/{_positive('lease id', lease_id)}{suffix}"


def grant_lease(ttl: float | timedelta, tenant: str | None = None) -> Call[LeaseOut]:
    """``POST /platform/leases`` (201): a lease of ``ttl`` seconds."""
    body = coerce(LeaseCreate, {"ttl": seconds(ttl, "ttl")}, "lease").model_dump_json().encode()
    return Call("POST", LEASES, decode_model(LeaseOut), params=_tenant(tenant), body=body)


def get_lease(lease_id: int, tenant: str | None = None) -> Call[LeaseOut]:
    """``GET /platform/leases/{id}``: a live lease and its keys (404 ``lease_not_found`` once it ended)."""
    return Call("GET", _lease_path(lease_id), decode_model(LeaseOut), params=_tenant(tenant))


def keepalive(lease_id: int, tenant: str | None = None) -> Call[LeaseOut]:
    """``PUT /platform/leases/{id}/keepalive``: another ``ttl`` from now."""
    return Call("PUT", _lease_path(lease_id, "/keepalive"), decode_model(LeaseOut), params=_tenant(tenant))


def revoke_lease(lease_id: int, tenant: str | None = None) -> Call[LeaseRevoked]:
    """``DELETE /platform/leases/{id}``: the lease ends and its keys are deleted."""
    return Call("DELETE", _lease_path(lease_id), decode_model(LeaseRevoked), params=_tenant(tenant))


# -- watch ----------------------------------------------------------------------------------------------------


def watch(
    prefix: str = "", key: str | None = None, from_revision: int | None = None, tenant: str | None = None
) -> Call[None]:
    """The streamed ``GET`` of a watch of ``key`` or of the keys under ``prefix`` (``decode`` checks the status).

    The server answers a watch from a revision it no longer keeps with 410 ``compacted`` (``CompactedError``,
    ``extra["oldest_revision"]``).
    """
    if key is not None and prefix:
        raise InvalidRequestError("watch a prefix or a key, not both", code="invalid_field")
    params = (("watch", "true"), *_revision("from_revision", from_revision), *_tenant(tenant))
    headers = (("Accept", "text/event-stream"),)
    if key is not None:
        return Call("GET", key_path(key), raise_for_problem, params=params, headers=headers, stream=True)
    params = (("prefix", _prefix(prefix)), *params)
    return Call("GET", STATE, raise_for_problem, params=params, headers=headers, stream=True)


@dataclass(frozen=True, slots=True)
class SseMessage:
    """One dispatched block of a ``text/event-stream``: an event (``data``), or a comment alone."""

    event: str = "message"
    data: str | None = None
    id: str | None = None
    comment: str | None = None


@dataclass(slots=True)
class SseDecoder:
    """A ``text/event-stream`` read line by line (WHATWG rules for the fields a watch uses).

    ``feed`` returns a message at each blank line that ends one; a block cut off by the connection is never
    returned.
    """

    event: str = "message"
    data: list[str] = field(default_factory=list)
    comment: str | None = None
    last_id: str | None = None

    def feed(self, line: str) -> SseMessage | None:
        """Take one line (without its newline); the message it completes, if any."""
        if line == "":
            found = None
            if self.data or self.comment is not None:
                data = "\n".join(self.data) if self.data else None
                found = SseMessage(self.event, data, self.last_id, self.comment)
            self.event, self.data, self.comment = "message", [], None
            return found
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "":
            self.comment = value
        elif name == "event":
            self.event = value
        elif name == "data":
            self.data.append(value)
        elif name == "id" and "\0" not in value:
            self.last_id = value
        return None


def sse_messages(lines: Iterable[str]) -> Iterator[SseMessage]:
    """The messages of a stream's lines."""
    decoder = SseDecoder()
    for line in lines:
        message = decoder.feed(line)
        if message is not None:
            yield message


def decode_event(data: str) -> EventOut:
    """An event's ``data`` as an ``EventOut``."""
    try:
        return EventOut.model_validate_json(data)
    except ValidationError as exc:
        raise InternalError(
            f"the server sent a watch event this client cannot read ({exc.error_count()} invalid fields)"
        ) from exc


@dataclass(slots=True)
class WatchCursor:
    """Where a watch is: ``next_revision`` is the ``from_revision`` its next connection asks for.

    Events below it (a server resending after a reconnect) are dropped, so a consumer sees each revision once.
    """

    next_revision: int | None = None

    def accept(self, message: SseMessage) -> EventOut | None:
        """The event ``message`` carries, or ``None`` for a comment or an event already seen."""
        if message.data is None:
            start = _START.match(message.comment or "")
            if start is not None and self.next_revision is None:
                self.next_revision = int(start.group(1))
            return None
        event = decode_event(message.data)
        if self.next_revision is not None and event.revision < self.next_revision:
            return None
        self.next_revision = event.revision + 1
        return event


def reconnect_delay(failures: int) -> float:
    """Seconds to wait before reconnecting after ``failures`` connections in a row that brought nothing."""
    if failures <= 0:
        return 0.0
    return float(min(MAX_RECONNECT_DELAY, 0.25 * 2 ** (failures - 1)))
