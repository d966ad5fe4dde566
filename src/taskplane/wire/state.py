"""Wire models of the state API (``/platform/state``, ``/platform/leases``).

A PUT's body is the value itself (any JSON); everything else about the write is in headers and the query
(``If-Match``, ``If-None-Match``, ``lease``, ``ttl``). Transactions follow etcd's Txn: ``compare``, then
``success`` ops if every compare holds, else ``failure`` ops.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictFloat, StrictInt, StrictStr

from taskplane.wire.base import InModel

_OUT = ConfigDict(extra="ignore", frozen=True)


class KeyValueOut(BaseModel):
    """An entry with its revisions."""

    model_config = _OUT

    key: str
    value: Any
    create_revision: int
    mod_revision: int
    version: int
    lease: int | None = None


class PutResult(BaseModel):
    """What a PUT wrote."""

    model_config = _OUT

    revision: int
    kv: KeyValueOut
    prev: KeyValueOut | None = None


class DeleteResult(BaseModel):
    """What a DELETE removed (``deleted`` 0: the key did not exist)."""

    model_config = _OUT

    revision: int
    deleted: int
    prev: KeyValueOut | None = None


class KeyList(BaseModel):
    """A page of entries in key order, read at ``revision``; pass ``next_key`` as ``after`` for more."""

    model_config = _OUT

    items: list[KeyValueOut]
    revision: int
    next_key: str | None


class CompareIn(InModel):
    """``target(key) op value``; for ``exists`` the value is a boolean."""

    key: StrictStr
    target: Literal["value", "version", "mod_revision", "create_revision", "exists"]
    op: Literal["equal", "not_equal", "greater", "less"] = "equal"
    value: Any = None


class OpIn(InModel):
    """One op: ``put`` (key, value, optional lease), ``get``, ``delete`` (key) or ``delete_prefix`` (key = prefix)."""

    op: Literal["put", "get", "delete", "delete_prefix"]
    key: StrictStr
    value: Any = None
    lease: StrictInt | None = None


class TxnIn(InModel):
    """An atomic transaction."""

    compare: list[CompareIn] = Field(default_factory=list)
    success: list[OpIn] = Field(default_factory=list)
    failure: list[OpIn] = Field(default_factory=list)


class OpResultOut(BaseModel):
    """One op's result: ``kv`` (get: the entry or null; put: the new entry), ``prev``, ``deleted``."""

    model_config = _OUT

    op: str
    key: str
    kv: KeyValueOut | None = None
    prev: KeyValueOut | None = None
    deleted: int = 0


class TxnOut(BaseModel):
    """Which branch ran (``succeeded``: the success ops), the revision after it, every op's result."""

    model_config = _OUT

    succeeded: bool
    revision: int
    results: list[OpResultOut]


class LeaseCreate(InModel):
    """A lease of ``ttl`` seconds."""

    ttl: StrictInt | StrictFloat = Field(description="seconds, > 0")


class LeaseOut(BaseModel):
    """A live lease and the keys attached to it."""

    model_config = _OUT

    id: int
    ttl: float
    expires_at: datetime
    keys: list[str] = Field(default_factory=list)


class LeaseRevoked(BaseModel):
    """The revision that deleted a revoked lease's keys."""

    model_config = _OUT

    revision: int


class EventOut(BaseModel):
    """One change, as a watch streams it (SSE ``data:``; the event ``id:`` is the revision)."""

    model_config = _OUT

    revision: int
    type: str
    key: str
    kv: KeyValueOut | None = None
    cause: str = ""
