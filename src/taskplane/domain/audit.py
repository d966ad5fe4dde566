"""Audit records and their hash chain: what makes the log tamper-evident, and the check that proves it.

    record n:  hash_n = SHA-256( hash_{n-1} || canonical JSON of record n's fields, seq included )
    head:      (seq, hash) of the last record, kept beside the log and updated in the same transaction

``verify_chain`` walks records in ``seq`` order and reports the first break: an edited record (its hash no
longer matches), a deleted, inserted or swapped one (a gap in ``seq`` or a ``prev_hash`` that is not the
previous record's hash), and a truncated tail (the last record is not the head, or is older than an external
checkpoint). An attacker who can write the database can delete the last records *and* rewind the head to match;
only a checkpoint ``(seq, hash)`` kept outside the database bounds that: every record up to the newest
checkpoint is covered, so at most the records written after it can vanish unnoticed.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

GENESIS_HASH = "0" * 64


class AuditOutcome:
    """The outcome words of audit records (strings, so old records stay readable as new words appear)."""

    SUCCESS = "success"  # the change was made (or an idempotent repeat was answered)
    REJECTED = "rejected"  # the request was refused for its content or the object's state (4xx)
    DENIED = "denied"  # authenticated, but not allowed (403, or a 404 hiding another tenant's object)
    UNAUTHENTICATED = "unauthenticated"  # 401
    THROTTLED = "throttled"  # 429 by a rate limit
    ERROR = "error"  # 5xx: nothing was changed


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """One audit record before it joins the chain. Never holds secrets (tokens, keys, env values)."""

    at: datetime
    request_id: str
    principal: str  # subject, e.g. key:0a1b2c3d4e5f, oidc:alice, anonymous
    tenant: str | None  # the tenant acted in; None for platform-level actions and denials outside a tenant
    action: str  # e.g. tasks.create, tokens.revoke, auth.login
    resource: str  # e.g. tasks/tsk-..., /platform/tasks
    outcome: str
    status: int | None = None  # the HTTP status, when known at write time
    source: str = ""  # the client address (after trusted proxies)
    detail: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class AuditRecord:
    """An entry in the chain."""

    seq: int
    entry: AuditEntry
    prev_hash: str
    hash: str


def canonical(seq: int, entry: AuditEntry) -> bytes:
    """The bytes hashed for a record: sorted-key JSON of every field, times as integer microseconds."""
    micros = int(entry.at.timestamp()) * 1_000_000 + entry.at.microsecond
    doc = {
        "seq": seq,
        "at": micros,
        "request_id": entry.request_id,
        "principal": entry.principal,
        "tenant": entry.tenant,
        "action": entry.action,
        "resource": entry.resource,
        "outcome": entry.outcome,
        "status": entry.status,
        "source": entry.source,
        "detail": dict(entry.detail),
    }
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str).encode()


def chain_hash(prev_hash: str, seq: int, entry: AuditEntry) -> str:
    """The hash of record ``seq`` that follows ``prev_hash``."""
    digest = hashlib.sha256()
    digest.update(prev_hash.encode())
    digest.update(canonical(seq, entry))
    return digest.hexdigest()


def compute_chain(head_seq: int, head_hash: str, entries: Iterable[AuditEntry]) -> list[AuditRecord]:
    """Chain ``entries`` after the head ``(head_seq, head_hash)``; the last record is the new head."""
    records: list[AuditRecord] = []
    seq, prev = head_seq, head_hash
    for entry in entries:
        seq += 1
        digest = chain_hash(prev, seq, entry)
        records.append(AuditRecord(seq, entry, prev, digest))
        prev = digest
    return records


@dataclass(frozen=True, slots=True)
class ChainBreak:
    """The first place a chain does not hold, and why."""

    seq: int
    kind: str  # edited | missing | inserted | reordered | truncated | checkpoint
    detail: str


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """A ``(seq, hash)`` pair copied out of the database: the chain must reach it and agree with it."""

    seq: int
    hash: str


def verify_chain(
    records: Iterable[AuditRecord],
    head: Checkpoint | None,
    checkpoints: Iterable[Checkpoint] = (),
    *,
    start: Checkpoint | None = None,
) -> tuple[int, ChainBreak | None]:
    """Check a chain in ``seq`` order; returns how many records were checked and the first break, if any.

    ``start`` is the record before the first one given (default: the chain's genesis), for checking a tail.
    ``head`` is the stored head; ``checkpoints`` are external ones.
    """
    expected_seq = (start.seq if start is not None else 0) + 1
    prev = start.hash if start is not None else GENESIS_HASH
    seen: dict[int, str] = {}
    count = 0
    for record in records:
        if record.seq < expected_seq:
            kind = "reordered" if record.seq in seen else "inserted"
            return count, ChainBreak(record.seq, kind, f"record {record.seq} appears after record {expected_seq - 1}")
        if record.seq > expected_seq:
            return count, ChainBreak(
                expected_seq, "missing", f"records {expected_seq}..{record.seq - 1} are missing (or were reordered)"
            )
        if record.prev_hash != prev:
            return count, ChainBreak(
                record.seq, "reordered", f"record {record.seq} does not follow record {record.seq - 1}"
            )
        if chain_hash(prev, record.seq, record.entry) != record.hash:
            return count, ChainBreak(record.seq, "edited", f"record {record.seq} was changed after it was written")
        seen[record.seq] = record.hash
        prev = record.hash
        expected_seq += 1
        count += 1
    last = expected_seq - 1
    if head is not None and (head.seq != last or head.hash != prev):
        if head.seq > last:
            detail = f"the log ends at record {last} but the head says {head.seq}"
            return count, ChainBreak(last + 1, "truncated", detail)
        return count, ChainBreak(
            head.seq, "truncated", f"the head ({head.seq}) does not match the last record ({last})"
        )
    for point in checkpoints:
        if point.seq > last:
            detail = f"the log ends at record {last}, before the checkpoint at {point.seq}"
            return count, ChainBreak(last + 1, "truncated", detail)
        if point.seq in seen and seen[point.seq] != point.hash:
            return count, ChainBreak(point.seq, "checkpoint", f"record {point.seq} differs from the checkpoint")
    return count, None
