"""Tampering with the audit log in the database is caught by re-checking the chain from the HTTP export.

Each case builds a fresh platform, makes 20 audited changes and refusals, edits ``taskplane.db`` behind the
server's back the way someone with write access to the database could, then downloads
``GET /platform/audit/export`` and ``GET /platform/audit/head`` and runs ``domain.audit.verify_chain`` on what
came back, exactly as ``taskplane audit verify`` does.

And the other direction: when the audit log cannot be written, a change is refused and nothing changes.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

import pytest

from taskplane.domain.audit import AuditEntry, AuditRecord, ChainBreak, Checkpoint, chain_hash, verify_chain
from tests.security.conftest import Secured

TASK = {"command": ["true"], "simulated_duration": 3600}
CHANGES = 20  # audit records made by ``make_history``, the first-start key included
COLUMNS = (
    "at", "request_id", "principal", "tenant", "action", "resource", "outcome", "status", "source", "detail",
    "prev_hash", "hash",
)  # fmt: skip
ENTRY_COLUMNS = COLUMNS[:-2]


# ------------------------------------------------------------------------------------------------ helpers


@contextmanager
def database(s: Secured) -> Iterator[sqlite3.Connection]:
    """A direct connection to the platform's SQLite file (what an attacker with file access has)."""
    conn = sqlite3.connect(s.settings.data_dir / "taskplane.db", timeout=10, isolation_level=None)
    try:
        yield conn
    finally:
        conn.close()


def record_of(doc: dict[str, Any]) -> AuditRecord:
    """The domain record an exported JSON line stands for."""
    at = datetime.fromisoformat(doc["at"])
    entry = AuditEntry(
        at=at if at.tzinfo is not None else at.replace(tzinfo=UTC),
        request_id=doc["request_id"],
        principal=doc["principal"],
        tenant=doc["tenant"],
        action=doc["action"],
        resource=doc["resource"],
        outcome=doc["outcome"],
        status=doc["status"],
        source=doc["source"],
        detail=doc["detail"],
    )
    return AuditRecord(seq=doc["seq"], entry=entry, prev_hash=doc["prev_hash"], hash=doc["hash"])


async def head_of(s: Secured) -> Checkpoint | None:
    async with s.admin() as admin:
        r = await admin.get("/platform/audit/head")
        assert r.status_code == 200, r.text
        doc = r.json()
        return Checkpoint(doc["seq"], doc["hash"]) if doc["seq"] else None


async def exported(s: Secured) -> list[AuditRecord]:
    async with s.admin() as admin:
        r = await admin.get("/platform/audit/export")
        assert r.status_code == 200, r.text
        assert r.headers["content-type"].startswith("application/x-ndjson")
        return [record_of(json.loads(line)) for line in r.text.splitlines() if line.strip()]


async def verify_over_http(s: Secured, checkpoints: tuple[Checkpoint, ...] = ()) -> tuple[int, ChainBreak | None]:
    head = await head_of(s)
    return verify_chain(await exported(s), head, checkpoints)


async def make_history(s: Secured) -> None:
    """19 audited requests after the first-start key: changes, a denial and failed logins."""
    async with s.admin() as admin:
        for name in ("ta", "tb", "tc"):
            assert (await admin.post("/platform/admin/tenants", json={"name": name})).status_code == 201
        keys = []
        for tenant, role in (("ta", "submitter"), ("tb", "viewer"), ("*", "viewer"), ("tc", "tenant-admin")):
            r = await admin.post("/platform/admin/tokens", json={"owner": "svc", "tenant": tenant, "roles": [role]})
            assert r.status_code == 201, r.text
            keys.append(r.json())
        assert (await admin.delete(f"/platform/admin/tokens/{keys[3]['id']}")).status_code == 200
        tasks = []
        for i in range(6):
            r = await admin.post("/platform/tasks", json={**TASK, "tenant": ("ta", "tb")[i % 2], "name": f"t{i}"})
            assert r.status_code == 201, r.text
            tasks.append(r.json()["id"])
        for task_id in tasks[:2]:
            assert (await admin.put(f"/platform/tasks/{task_id}/cancel")).status_code in (200, 202)
    async with s.client(keys[1]["token"]) as viewer:
        assert (await viewer.post("/platform/tasks", json={**TASK, "tenant": "tb"})).status_code == 403
    async with s.client("tpk_0123456789abcdef_nope", address="192.0.2.1") as intruder:
        assert (await intruder.get("/platform/tasks")).status_code == 401
        assert (await intruder.get("/platform/whoami")).status_code == 401


def read_row(conn: sqlite3.Connection, seq: int) -> tuple[Any, ...]:
    row = conn.execute(f"SELECT {', '.join(COLUMNS)} FROM audit_log WHERE seq = ?", (seq,)).fetchone()
    assert row is not None
    return tuple(row)


def write_row(conn: sqlite3.Connection, seq: int, columns: tuple[str, ...], values: tuple[Any, ...]) -> None:
    assignments = ", ".join(f"{c} = ?" for c in columns)
    conn.execute(f"UPDATE audit_log SET {assignments} WHERE seq = ?", (*values, seq))


def _from_micros(value: int) -> datetime:
    seconds, rest = divmod(value, 1_000_000)
    return datetime.fromtimestamp(seconds, UTC).replace(microsecond=rest)


def entry_of(row: dict[str, Any]) -> AuditEntry:
    """The entry a raw ``audit_log`` row holds (times are integer microseconds there)."""
    return AuditEntry(
        at=_from_micros(row["at"]), request_id=row["request_id"], principal=row["principal"], tenant=row["tenant"],
        action=row["action"], resource=row["resource"], outcome=row["outcome"], status=row["status"],
        source=row["source"], detail=json.loads(row["detail"]),
    )  # fmt: skip


def micros(at: datetime) -> int:
    return int(at.timestamp()) * 1_000_000 + at.microsecond


@dataclass
class History:
    """A platform with ``CHANGES`` audit records, and the checkpoint taken of it before any tampering."""

    s: Secured
    checkpoint: Checkpoint

    @property
    def last(self) -> int:
        return self.checkpoint.seq


@pytest.fixture
async def history(make_secured: Callable[..., Any]) -> AsyncIterator[History]:
    async with make_secured() as s:
        await make_history(s)
        head = await head_of(s)
        assert head is not None
        assert head.seq == CHANGES
        count, broken = await verify_over_http(s)
        assert (count, broken) == (CHANGES, None)
        yield History(s, head)


# ------------------------------------------------------------------------------------------ tamper classes


async def test_edited_record(history: History) -> None:
    with database(history.s) as db:
        db.execute("UPDATE audit_log SET action = 'tasks.get' WHERE seq = 10")
    count, broken = await verify_over_http(history.s)
    assert broken is not None
    assert (broken.kind, broken.seq, count) == ("edited", 10, 9)


async def test_edited_detail_only(history: History) -> None:
    with database(history.s) as db:
        detail = json.loads(db.execute("SELECT detail FROM audit_log WHERE seq = 5").fetchone()[0])
        detail["roles"] = ["platform-admin"]
        db.execute("UPDATE audit_log SET detail = ? WHERE seq = 5", (json.dumps(detail),))
    _, broken = await verify_over_http(history.s)
    assert broken is not None
    assert (broken.kind, broken.seq) == ("edited", 5)


async def test_edited_record_with_its_hash_recomputed(history: History) -> None:
    """The attacker re-hashes the edited record: the next record no longer follows it."""
    with database(history.s) as db:
        row = dict(zip(COLUMNS, read_row(db, 10), strict=True))
        entry = replace(entry_of(row), action="tasks.get")
        forged_hash = chain_hash(row["prev_hash"], 10, entry)
        db.execute("UPDATE audit_log SET action = 'tasks.get', hash = ? WHERE seq = 10", (forged_hash,))
    count, broken = await verify_over_http(history.s)
    assert broken is not None
    assert (broken.kind, broken.seq, count) == ("reordered", 11, 10)


async def test_deleted_middle_record(history: History) -> None:
    with database(history.s) as db:
        db.execute("DELETE FROM audit_log WHERE seq = 10")
    count, broken = await verify_over_http(history.s)
    assert broken is not None
    assert (broken.kind, broken.seq, count) == ("missing", 10, 9)


async def test_swapped_records(history: History) -> None:
    """Two records exchange everything but their seq (hashes included)."""
    with database(history.s) as db:
        a, b = read_row(db, 8), read_row(db, 9)
        write_row(db, 8, COLUMNS, b)
        write_row(db, 9, COLUMNS, a)
    count, broken = await verify_over_http(history.s)
    assert broken is not None
    assert (broken.kind, broken.seq, count) == ("reordered", 8, 7)


async def test_swapped_record_contents_keeping_the_hashes(history: History) -> None:
    with database(history.s) as db:
        a, b = read_row(db, 8), read_row(db, 9)
        width = len(ENTRY_COLUMNS)
        write_row(db, 8, ENTRY_COLUMNS, b[:width])
        write_row(db, 9, ENTRY_COLUMNS, a[:width])
    _, broken = await verify_over_http(history.s)
    assert broken is not None
    assert (broken.kind, broken.seq) == ("edited", 8)


async def test_inserted_forged_record(history: History) -> None:
    """A well-formed forgery at seq 10 (its prev_hash and hash computed properly), later records shifted up."""
    at = 10
    with database(history.s) as db:
        prev = dict(zip(COLUMNS, read_row(db, at - 1), strict=True))
        forged = AuditEntry(
            at=_from_micros(prev["at"] + 1), request_id="req-forged", principal="key:0000000000000000",
            tenant="ta", action="tokens.revoke", resource="tokens/0000000000000000", outcome="success",
            status=200, source="127.0.0.1", detail={"method": "DELETE"},
        )  # fmt: skip
        forged_hash = chain_hash(prev["hash"], at, forged)
        db.execute("BEGIN")
        db.execute("UPDATE audit_log SET seq = -(seq + 1) WHERE seq >= ?", (at,))
        db.execute("UPDATE audit_log SET seq = -seq WHERE seq < 0")
        db.execute(
            f"INSERT INTO audit_log (seq, {', '.join(COLUMNS)}) VALUES ({', '.join('?' * (len(COLUMNS) + 1))})",
            (
                at, micros(forged.at), forged.request_id, forged.principal, forged.tenant, forged.action,
                forged.resource, forged.outcome, forged.status, forged.source, json.dumps(dict(forged.detail)),
                prev["hash"], forged_hash,
            ),
        )  # fmt: skip
        last_hash = db.execute("SELECT hash FROM audit_log ORDER BY seq DESC LIMIT 1").fetchone()[0]
        db.execute("UPDATE audit_head SET seq = ?, hash = ? WHERE id = 1", (history.last + 1, last_hash))
        db.execute("COMMIT")
    records = await exported(history.s)
    assert len(records) == CHANGES + 1
    assert records[at - 1].entry.request_id == "req-forged"
    count, broken = verify_chain(records, await head_of(history.s))
    assert broken is not None
    # The forgery itself checks out; the record after it does not follow it.
    assert (broken.kind, broken.seq, count) == ("reordered", at + 1, at)


async def test_truncated_tail(history: History) -> None:
    with database(history.s) as db:
        db.execute("DELETE FROM audit_log WHERE seq > ?", (history.last - 3,))
    count, broken = await verify_over_http(history.s)
    assert broken is not None
    assert (broken.kind, broken.seq, count) == ("truncated", history.last - 2, history.last - 3)


async def test_truncated_tail_with_the_head_rewound(history: History) -> None:
    """The documented bound: undetectable from the database alone, caught by a checkpoint kept elsewhere."""
    keep = history.last - 3
    with database(history.s) as db:
        new_last = db.execute("SELECT hash FROM audit_log WHERE seq = ?", (keep,)).fetchone()[0]
        db.execute("BEGIN")
        db.execute("DELETE FROM audit_log WHERE seq > ?", (keep,))
        db.execute("UPDATE audit_head SET seq = ?, hash = ? WHERE id = 1", (keep, new_last))
        db.execute("COMMIT")
    # Without a checkpoint the shorter chain is internally consistent.
    assert await verify_over_http(history.s) == (keep, None)
    # With the checkpoint taken before the truncation, it is not.
    count, broken = await verify_over_http(history.s, (history.checkpoint,))
    assert broken is not None
    assert (broken.kind, broken.seq, count) == ("truncated", keep + 1, keep)
    # An older checkpoint, from before the truncated records, does not see it (the bound is the interval).
    with database(history.s) as db:
        older = Checkpoint(keep, db.execute("SELECT hash FROM audit_log WHERE seq = ?", (keep,)).fetchone()[0])
    assert await verify_over_http(history.s, (older,)) == (keep, None)


async def test_rewritten_chain_is_caught_by_a_later_checkpoint(history: History) -> None:
    """Edit record 10 and recompute every hash after it, head included: only the checkpoint still disagrees."""
    with database(history.s) as db:
        db.execute("BEGIN")
        db.execute("UPDATE audit_log SET principal = 'key:innocent' WHERE seq = 10")
        prev = read_row(db, 9)[-1]
        for seq in range(10, history.last + 1):
            digest = chain_hash(prev, seq, entry_of(dict(zip(COLUMNS, read_row(db, seq), strict=True))))
            db.execute("UPDATE audit_log SET prev_hash = ?, hash = ? WHERE seq = ?", (prev, digest, seq))
            prev = digest
        db.execute("UPDATE audit_head SET seq = ?, hash = ? WHERE id = 1", (history.last, prev))
        db.execute("COMMIT")
    assert await verify_over_http(history.s) == (history.last, None)
    _, broken = await verify_over_http(history.s, (history.checkpoint,))
    assert broken is not None
    assert (broken.kind, broken.seq) == ("checkpoint", history.last)


# -------------------------------------------------------------------------- no audit record, no change


def task_rows(s: Secured) -> int:
    with database(s) as db:
        count: int = db.execute("SELECT count(*) FROM tasks").fetchone()[0]
        return count


BREAKAGES = {
    "audit_head dropped": ("DROP TABLE audit_head", None),
    "insert trigger raises": (
        "CREATE TRIGGER no_audit BEFORE INSERT ON audit_log BEGIN SELECT RAISE(ABORT, 'audit is broken'); END",
        "DROP TRIGGER no_audit",
    ),
}


@pytest.fixture(params=list(BREAKAGES), ids=list(BREAKAGES))
def breakage(request: pytest.FixtureRequest) -> tuple[str, str | None]:
    found: tuple[str, str | None] = BREAKAGES[request.param]
    return found


async def test_no_change_without_its_audit_record(
    make_secured: Callable[..., Any], breakage: tuple[str, str | None]
) -> None:
    breaking, repair = breakage
    async with make_secured() as s, s.admin() as admin:
        assert (await admin.post("/platform/admin/tenants", json={"name": "ta"})).status_code == 201
        r = await admin.post("/platform/admin/tokens", json={"owner": "svc", "tenant": "ta", "roles": ["submitter"]})
        assert r.status_code == 201
        key = r.json()
        with database(s) as db:
            audit_rows = db.execute("SELECT count(*) FROM audit_log").fetchone()[0]
            db.execute(breaking)
        r = await admin.post("/platform/tasks", json=TASK)
        assert 500 <= r.status_code < 600, r.text
        assert r.headers["content-type"].startswith("application/problem+json")
        assert r.json()["status"] == r.status_code
        assert task_rows(s) == 0
        # A revocation is refused the same way: the key keeps working.
        r = await admin.delete(f"/platform/admin/tokens/{key['id']}")
        assert 500 <= r.status_code < 600, r.text
        async with s.client(key["token"]) as c:
            assert (await c.get("/platform/whoami")).status_code == 200
            # A refusal changes nothing but still needs its record: unwritable, the answer is 503.
            r = await c.post("/platform/tasks", json={**TASK, "tenant": "tb"})
            assert r.status_code == 503, r.text
            assert r.headers["content-type"].startswith("application/problem+json")
        with database(s) as db:
            assert db.execute("SELECT count(*) FROM audit_log").fetchone()[0] == audit_rows
            if repair is not None:
                db.execute(repair)
        if repair is not None:
            r = await admin.post("/platform/tasks", json=TASK)
            assert r.status_code == 201, r.text
            assert task_rows(s) == 1


async def test_route_denial_without_its_audit_record_is_503(
    make_secured: Callable[..., Any], breakage: tuple[str, str | None]
) -> None:
    """docs/security.md: a refused request's record is written before the response; if it cannot be, a
    mutating request is answered 503. Here the refusal comes from the route table (a viewer may not create
    tasks anywhere)."""
    breaking, _ = breakage
    async with make_secured() as s, s.admin() as admin:
        r = await admin.post("/platform/admin/tokens", json={"owner": "svc", "tenant": "*", "roles": ["viewer"]})
        assert r.status_code == 201
        with database(s) as db:
            db.execute(breaking)
        async with s.client(r.json()["token"]) as viewer:
            r = await viewer.post("/platform/tasks", json=TASK)
        assert task_rows(s) == 0
        assert r.status_code == 503, f"the denial went unrecorded and was answered {r.status_code}: {r.text}"
