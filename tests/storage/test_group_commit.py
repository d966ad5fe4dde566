"""GroupCommitWriter: batched writes keep each caller's outcome, queue order and all-or-nothing commits."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Connection, Engine, text

from taskplane.errors import ConflictError, UnavailableError
from taskplane.storage.sql.engine import WRITE_OPTION, create_sql_engine
from taskplane.storage.sql.group_commit import GroupCommitWriter


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    eng = create_sql_engine(f"sqlite:///{tmp_path / 'gc.db'}", pool_size=3)
    with eng.execution_options(**{WRITE_OPTION: True}).begin() as conn:
        conn.exec_driver_sql("CREATE TABLE log (n INTEGER PRIMARY KEY, v TEXT NOT NULL)")
    yield eng
    eng.dispose()


def rows(engine: Engine) -> list[tuple[int, str]]:
    with engine.begin() as conn:
        return [(int(r[0]), str(r[1])) for r in conn.exec_driver_sql("SELECT n, v FROM log ORDER BY n")]


def insert(n: int, v: str = "x"):  # type: ignore[no-untyped-def]
    def body(conn: Connection) -> int:
        conn.execute(text("INSERT INTO log (n, v) VALUES (:n, :v)"), {"n": n, "v": v})
        return n

    return body


class Gate:
    """A body that blocks the writer thread until released, so that the next writes queue into one batch."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()

    def __call__(self, conn: Connection) -> str:
        self.entered.set()
        assert self.release.wait(10)
        return "gate"


async def test_a_failing_write_is_rolled_back_alone_and_the_batch_commits(engine: Engine) -> None:
    writer = GroupCommitWriter(engine.execution_options(**{WRITE_OPTION: True}), name="test-gc")
    gate = Gate()
    first = asyncio.ensure_future(writer.write("gate", gate))
    await asyncio.to_thread(gate.entered.wait, 10)

    def failing(conn: Connection) -> None:
        conn.execute(text("INSERT INTO log (n, v) VALUES (2, 'doomed')"))
        raise ConflictError("no", code="test_conflict")

    queued = [
        asyncio.ensure_future(writer.write("one", insert(1))),
        asyncio.ensure_future(writer.write("two", failing)),
        asyncio.ensure_future(writer.write("dup", insert(1, "duplicate key"))),
        asyncio.ensure_future(writer.write("three", insert(3))),
    ]
    await asyncio.sleep(0.05)
    gate.release.set()
    assert await first == "gate"
    results = await asyncio.gather(*queued, return_exceptions=True)
    assert results[0] == 1
    assert isinstance(results[1], ConflictError)
    assert isinstance(results[2], ConflictError) and "UNIQUE" in str(results[2])  # the SQL error, translated
    assert results[3] == 3
    assert rows(engine) == [(1, "x"), (3, "x")]  # the failed bodies' own writes are gone, the others kept
    await asyncio.to_thread(writer.close)


async def test_later_writes_see_earlier_ones_in_queue_order(engine: Engine) -> None:
    writer = GroupCommitWriter(engine.execution_options(**{WRITE_OPTION: True}), name="test-gc")
    gate = Gate()
    first = asyncio.ensure_future(writer.write("gate", gate))
    await asyncio.to_thread(gate.entered.wait, 10)

    def append(conn: Connection) -> int:
        n = int(conn.exec_driver_sql("SELECT COUNT(*) FROM log").scalar_one())
        conn.execute(text("INSERT INTO log (n, v) VALUES (:n, 'a')"), {"n": n})
        return n

    queued = [asyncio.ensure_future(writer.write("append", append)) for _ in range(10)]
    await asyncio.sleep(0.05)
    gate.release.set()
    await first
    assert await asyncio.gather(*queued) == list(range(10))
    await asyncio.to_thread(writer.close)


async def test_a_failed_commit_fails_every_write_of_the_batch(engine: Engine) -> None:
    """A deferred foreign key only fails at COMMIT: the whole batch is rolled back and every caller told."""
    write_engine = engine.execution_options(**{WRITE_OPTION: True})
    with write_engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE parent (id INTEGER PRIMARY KEY)")
        conn.exec_driver_sql(
            "CREATE TABLE child (id INTEGER PRIMARY KEY, "
            "parent INTEGER REFERENCES parent(id) DEFERRABLE INITIALLY DEFERRED)"
        )
    writer = GroupCommitWriter(write_engine, name="test-gc")
    gate = Gate()
    first = asyncio.ensure_future(writer.write("gate", gate))
    await asyncio.to_thread(gate.entered.wait, 10)

    def orphan(conn: Connection) -> None:
        conn.exec_driver_sql("INSERT INTO child (id, parent) VALUES (1, 99)")

    queued = [
        asyncio.ensure_future(writer.write("good", insert(1))),
        asyncio.ensure_future(writer.write("orphan", orphan)),
    ]
    await asyncio.sleep(0.05)
    gate.release.set()
    assert await first == "gate"  # a batch of its own, committed before the others queued
    results = await asyncio.gather(*queued, return_exceptions=True)
    assert all(isinstance(r, ConflictError) and "FOREIGN KEY" in str(r) for r in results), results
    assert rows(engine) == []
    assert await writer.write("after", insert(5)) == 5  # the writer goes on
    assert rows(engine) == [(5, "x")]
    await asyncio.to_thread(writer.close)


async def test_a_standalone_call_runs_between_batches_in_queue_order(engine: Engine) -> None:
    write_engine = engine.execution_options(**{WRITE_OPTION: True})
    writer = GroupCommitWriter(write_engine, name="test-gc")
    gate = Gate()
    first = asyncio.ensure_future(writer.write("gate", gate))
    await asyncio.to_thread(gate.entered.wait, 10)

    def count_alone() -> int:
        with engine.begin() as conn:
            return int(conn.exec_driver_sql("SELECT COUNT(*) FROM log").scalar_one())

    before = asyncio.ensure_future(writer.write("before", insert(1)))
    alone = asyncio.ensure_future(writer.run("count", count_alone))
    after = asyncio.ensure_future(writer.write("after", insert(2)))
    await asyncio.sleep(0.05)
    gate.release.set()
    await first
    assert (await before, await alone, await after) == (1, 1, 2)  # the call saw the write queued before it only
    await asyncio.to_thread(writer.close)


async def test_close_finishes_queued_writes_then_refuses(engine: Engine) -> None:
    writer = GroupCommitWriter(engine.execution_options(**{WRITE_OPTION: True}), name="test-gc")
    queued = [asyncio.ensure_future(writer.write("w", insert(n))) for n in range(5)]
    await asyncio.sleep(0)  # let them queue
    await asyncio.to_thread(writer.close)
    assert await asyncio.gather(*queued) == list(range(5))
    with pytest.raises(UnavailableError):
        await writer.write("late", insert(9))
    assert [n for n, _ in rows(engine)] == list(range(5))
