"""Migration 0003 on a database holding data written at 0002: tenants get the default policy, tasks no host access."""

from __future__ import annotations

import pytest
from alembic import command
from sqlalchemy import Engine, text

from taskplane.domain.audit import verify_chain
from taskplane.domain.resources import Resources
from taskplane.domain.task import NO_HOST_ACCESS, TaskSpec, TaskState
from taskplane.domain.tenant import DEFAULT_POLICY, TenantPolicy
from taskplane.services.ports import AuditFilter
from taskplane.storage import create_task_store, upgrade_database
from taskplane.storage.sql.engine import WRITE_OPTION, create_sql_engine
from taskplane.storage.sql.migrate import alembic_config
from taskplane.storage.sql.tables import to_micros
from tests.storage.conftest import T0, api_key, binding, custom_role, entry, tenant

# A spec exactly as the 0002 code wrote it: every field of the time, none of host and owner.
_OLD_SPEC = (
    '{"command":["echo","hi"],"shell":false,"env":{},"workdir":null,"image":null,'
    '"resources":{"millicpu":500,"memory":1024,"gpu":0},"priority":0,"tenant":"acme","labels":{},'
    '"timeouts":{"queue":null,"run":null,"deadline":null},"retry":null,"name":null,"pool":"default",'
    '"node_selector":{},"reservation":null,"simulated_duration":null}'
)


def _migrate_to(engine: Engine, revision: str, *, down: bool = False) -> None:
    with engine.begin() as conn:
        config = alembic_config()
        config.attributes["connection"] = conn
        (command.downgrade if down else command.upgrade)(config, revision)


def _insert_old_rows(engine: Engine) -> None:
    at = to_micros(T0)
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO tenants (name, weight, priority_min, priority_max, borrowing, created_at, updated_at)"
                " VALUES ('acme', 2.0, -10, 10, true, :at, :at)"
            ),
            {"at": at},
        )
        conn.execute(
            text(
                "INSERT INTO tasks (id, seq, tenant, state, priority, spec, attempts, infra_failures,"
                " cancel_requested, created_at, updated_at, pool, millicpu, memory, gpu)"
                " VALUES ('old1', 1, 'acme', 'pending', 0, :spec, 0, 0, false, :at, :at, 'default', 500, 1024, 0)"
            ),
            {"spec": _OLD_SPEC, "at": at},
        )
        conn.execute(text("UPDATE meta SET value = 1 WHERE key = 'task_seq'"))


@pytest.fixture
def old_db(empty_url: str) -> str:
    """A database at revision 0002 with a tenant and a task written the 0002 way."""
    engine = create_sql_engine(empty_url).execution_options(**{WRITE_OPTION: True})
    try:
        _migrate_to(engine, "0002")
        _insert_old_rows(engine)
    finally:
        engine.dispose()
    return empty_url


async def test_upgrading_a_0002_database_reads_old_rows_with_the_defaults(old_db: str) -> None:
    upgrade_database(old_db)

    store = create_task_store(old_db)
    try:
        acme = await store.get_tenant("acme")
        assert acme is not None
        assert (acme.weight, acme.priority_min, acme.priority_max, acme.created_at) == (2.0, -10, 10, T0)
        assert acme.policy == DEFAULT_POLICY
        old = await store.get_task("old1")
        assert old is not None
        assert old.state is TaskState.PENDING
        assert old.spec.host == NO_HOST_ACCESS
        assert old.spec.owner is None
        assert old.spec == TaskSpec(command=("echo", "hi"), tenant="acme", resources=Resources(500, 1024))

        # The new tables are there and empty; the chain starts from genesis.
        assert await store.audit_head() is None
        assert not await store.has_api_keys()
        assert await store.list_roles() == []
        assert await store.list_bindings() == []
        updated = await store.update_tenant(
            tenant("acme", policy=TenantPolicy(allow_network=True)), entry("tenants.update", None)
        )
        assert updated.policy == TenantPolicy(allow_network=True)
        records = await store.list_audit(AuditFilter(), 10)
        assert [r.seq for r in records] == [1]
        assert verify_chain(records, await store.audit_head()) == (1, None)
    finally:
        await store.close()


async def test_downgrading_to_0002_keeps_tenants_and_tasks(old_db: str) -> None:
    upgrade_database(old_db)
    store = create_task_store(old_db)
    try:
        await store.create_role(custom_role("auditor"))
        await store.create_binding(binding(role="auditor"))
        await store.create_api_key(api_key())
        await store.append_audit([entry()])
    finally:
        await store.close()

    engine = create_sql_engine(old_db).execution_options(**{WRITE_OPTION: True})
    try:
        _migrate_to(engine, "0002", down=True)
        with engine.connect() as conn:
            assert conn.execute(text("SELECT count(*) FROM tenants")).scalar_one() == 1
            assert conn.execute(text("SELECT count(*) FROM tasks")).scalar_one() == 1
    finally:
        engine.dispose()

    upgrade_database(old_db)
    store = create_task_store(old_db)
    try:
        acme = await store.get_tenant("acme")
        assert acme is not None and acme.policy == DEFAULT_POLICY
        assert await store.audit_head() is None  # the chain went with the tables
        assert not await store.has_api_keys()
    finally:
        await store.close()
