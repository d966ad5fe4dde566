"""Migration 0002 on a database holding data written at 0001: nothing is lost, the copies are backfilled."""

from __future__ import annotations

from datetime import timedelta

import pytest
from alembic import command
from sqlalchemy import Engine, text

from taskplane.domain.resources import Resources
from taskplane.domain.task import AttemptState, TaskSpec, TaskState
from taskplane.services.ports import NewTask, TaskFilter
from taskplane.storage import create_task_store, upgrade_database
from taskplane.storage.sql.engine import WRITE_OPTION, create_sql_engine
from taskplane.storage.sql.migrate import alembic_config
from taskplane.storage.sql.tables import to_micros
from tests.storage.conftest import T0, reservation, task, tenant

# Rows exactly as the 0001 code wrote them (spec JSON without pool, node selector, reservation, extended).
_OLD_SPEC = (
    '{"command":["echo","hi"],"shell":false,"env":{},"workdir":null,"image":null,'
    '"resources":{"millicpu":1500,"memory":1073741824,"gpu":1},"priority":3,"tenant":"acme","labels":{},'
    '"timeouts":{"queue":null,"run":null,"deadline":null},"retry":null,"name":"old"}'
)
_BARE_SPEC = '{"command":["true"]}'


def _migrate_to(engine: Engine, revision: str, *, down: bool = False) -> None:
    with engine.begin() as conn:
        config = alembic_config()
        config.attributes["connection"] = conn
        (command.downgrade if down else command.upgrade)(config, revision)


def _insert_old_rows(engine: Engine) -> None:
    task_sql = text(
        "INSERT INTO tasks (id, seq, tenant, state, priority, name, spec, attempts, infra_failures,"
        " cancel_requested, created_at, updated_at, started_at)"
        " VALUES (:id, :seq, 'acme', :state, 3, NULL, :spec, :attempts, 0, false, :at, :at, :started)"
    )
    at = to_micros(T0)
    with engine.begin() as conn:
        rows = [("old1", 1, "running", _OLD_SPEC, 1, at), ("old2", 2, "pending", _BARE_SPEC, 0, None)]
        conn.execute(
            task_sql,
            [
                {"id": i, "seq": seq, "state": state, "spec": spec, "attempts": n, "at": at, "started": started}
                for i, seq, state, spec, n, started in rows
            ],
        )
        conn.execute(
            text(
                "INSERT INTO attempts (task_id, number, state, node, created_at, started_at, log_truncated)"
                " VALUES ('old1', 1, 'running', 'node-1', :at, :at, false)"
            ),
            {"at": at},
        )
        conn.execute(text("UPDATE meta SET value = 2 WHERE key = 'task_seq'"))


@pytest.fixture
def old_db(empty_url: str) -> str:
    """A database at revision 0001 with two tasks (one running) written the 0001 way."""
    engine = create_sql_engine(empty_url).execution_options(**{WRITE_OPTION: True})
    try:
        _migrate_to(engine, "0001")
        _insert_old_rows(engine)
    finally:
        engine.dispose()
    return empty_url


async def test_upgrading_a_0001_database_keeps_and_backfills_its_tasks(old_db: str) -> None:
    upgrade_database(old_db)

    store = create_task_store(old_db)
    try:
        old = await store.get_task("old1")
        assert old is not None
        assert old.seq == 1
        assert old.state is TaskState.RUNNING
        assert old.spec == TaskSpec(
            command=("echo", "hi"), resources=Resources(1500, 1 << 30, 1), priority=3, tenant="acme", name="old"
        )
        assert old.spec.pool == "default"
        bare = await store.get_task("old2")
        assert bare is not None
        assert bare.spec == TaskSpec(command=("true",))
        [only] = await store.get_attempts("old1")
        assert only.state is AttemptState.RUNNING

        # The resource copies were backfilled from the spec: usage sees the old running attempt.
        [row] = await store.usage(T0, T0 + timedelta(seconds=10))
        assert (row.tenant, row.pool, row.attempts) == ("acme", "default", 1)
        assert row.cpu_seconds == pytest.approx(1.5 * 10)
        assert row.memory_byte_seconds == pytest.approx((1 << 30) * 10)
        assert row.gpu_seconds == pytest.approx(10.0)

        # New rows go on from the old counters; the new tables work.
        [made] = await store.create_tasks([task().tenant("acme").pool("gpu").new()], [])
        assert made.task.seq == 3
        page = await store.list_tasks(TaskFilter(tenant="acme"), 10, None)
        assert [t.id for t in page.items] == [made.task.id, "old2", "old1"]
        assert (await store.create_reservation(reservation("acme"))).seq == 1
        assert await store.create_tenant(tenant("acme")) == tenant("acme")
        unfinished, live = await store.load_unfinished()
        assert [t.id for t in unfinished] == ["old1", "old2", made.task.id]
        assert [a.task_id for a in live] == ["old1"]
    finally:
        await store.close()


async def test_downgrading_to_0001_keeps_the_tasks(old_db: str) -> None:
    upgrade_database(old_db)
    store = create_task_store(old_db)
    try:
        await store.create_tasks([NewTask(task().tenant("acme").build())], [])
    finally:
        await store.close()

    engine = create_sql_engine(old_db).execution_options(**{WRITE_OPTION: True})
    try:
        _migrate_to(engine, "0001", down=True)
        with engine.connect() as conn:
            assert conn.execute(text("SELECT count(*) FROM tasks")).scalar_one() == 3
            assert conn.execute(text("SELECT count(*) FROM attempts")).scalar_one() == 1
    finally:
        engine.dispose()

    upgrade_database(old_db)
    store = create_task_store(old_db)
    try:
        assert await store.get_task("old1") is not None
    finally:
        await store.close()
