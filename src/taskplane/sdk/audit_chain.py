"""Check an audit export with the server's own rules (``domain.audit.verify_chain``), away from the server.

    JSON lines --decode_audit_lines--> AuditRecordOut --to_record--> AuditRecord --+
                                                                                  +--> verify_chain --> ChainReport
    the server's head, checkpoints kept elsewhere (Checkpoint) -------------------+

Only a whole chain (from record 1) can be checked: an export made with ``since`` starts mid-chain and reports
the records before it as missing.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC

from taskplane.domain.audit import GENESIS_HASH, AuditEntry, AuditRecord, ChainBreak, Checkpoint, verify_chain
from taskplane.wire.security import AuditRecordOut


@dataclass(frozen=True, slots=True)
class ChainReport:
    """What a check found: ``count`` records hold up to ``last`` (``(0, GENESIS_HASH)`` when none); ``broken``."""

    count: int
    last: Checkpoint
    broken: ChainBreak | None

    @property
    def ok(self) -> bool:
        """Whether the chain holds."""
        return self.broken is None


def to_record(out: AuditRecordOut) -> AuditRecord:
    """The domain record a wire record stands for (a time without a zone is UTC, as the server writes it)."""
    at = out.at if out.at.tzinfo is not None else out.at.replace(tzinfo=UTC)
    entry = AuditEntry(
        at=at,
        request_id=out.request_id,
        principal=out.principal,
        tenant=out.tenant,
        action=out.action,
        resource=out.resource,
        outcome=out.outcome,
        status=out.status,
        source=out.source,
        detail=out.detail,
    )
    return AuditRecord(seq=out.seq, entry=entry, prev_hash=out.prev_hash, hash=out.hash)


def verify_records(
    records: Iterable[AuditRecordOut], head: Checkpoint | None = None, checkpoints: Iterable[Checkpoint] = ()
) -> ChainReport:
    """Check ``records`` (in ``seq`` order, from record 1) against ``head`` and external ``checkpoints``.

    ``head`` must be the last record exactly; a checkpoint must be reached and agreed with, and may be followed by
    later records (so the server's head, read before an export, is passed as a checkpoint).
    """
    last = Checkpoint(0, GENESIS_HASH)
    verified: list[Checkpoint] = []

    def tracked() -> Iterator[AuditRecord]:
        for out in records:
            record = to_record(out)
            verified.append(Checkpoint(record.seq, record.hash))
            yield record

    count, broken = verify_chain(tracked(), head, list(checkpoints))
    if count:
        last = verified[count - 1]
    return ChainReport(count, last, broken)
