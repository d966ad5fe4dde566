"""Storage fixtures: one ``store`` per test, over SQLite (a temp file) and PostgreSQL (a fresh schema)."""

from __future__ import annotations

import itertools
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from taskplane.domain.access import ApiKey, Role, RoleBinding, StoredRole
from taskplane.domain.audit import AuditEntry, AuditOutcome
from taskplane.domain.reservation import Reservation, ReservationState
from taskplane.domain.resources import Resources
from taskplane.domain.task import Attempt, AttemptState, Task, TaskSpec, TaskState
from taskplane.domain.tenant import Quota, Tenant
from taskplane.services.ports import NewTask, TaskEvent
from taskplane.storage import SqlTaskStore, create_task_store, upgrade_database
from tests.support.services import postgres_schema

T0 = datetime(2025, 3, 1, 12, 0, 0, 123456, tzinfo=UTC)


@pytest.fixture(params=["sqlite", "postgres"])
def empty_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """An empty database with no schema at all: a SQLite file, or a PostgreSQL schema of its own."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'db' / 'taskplane.db'}"
        return
    with postgres_schema() as url:
        yield url


@pytest.fixture(params=["sqlite", "postgres"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A migrated, empty database: a SQLite file, or a PostgreSQL schema of its own."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'db' / 'taskplane.db'}"
        upgrade_database(url)
        yield url
        return
    with postgres_schema() as url:
        upgrade_database(url)
        yield url


@pytest.fixture
async def store(store_url: str) -> AsyncIterator[SqlTaskStore]:
    s = create_task_store(store_url)
    yield s
    await s.close()


_ids = itertools.count(1)


@dataclass
class TaskBuilder:
    """``task().tenant("a").labels(team="x").build()``: a valid pending task, changed one fact at a time."""

    spec: dict[str, Any] = field(default_factory=lambda: {"command": ("echo", "hi")})
    fields: dict[str, Any] = field(default_factory=dict)

    def tenant(self, tenant: str) -> TaskBuilder:
        self.spec["tenant"] = tenant
        return self

    def labels(self, **labels: str) -> TaskBuilder:
        self.spec["labels"] = labels
        return self

    def pool(self, pool: str) -> TaskBuilder:
        self.spec["pool"] = pool
        return self

    def resources(self, millicpu: int = 0, memory: int = 0, gpu: int = 0) -> TaskBuilder:
        self.spec["resources"] = Resources(millicpu, memory, gpu)
        return self

    def key(self, key: str) -> TaskBuilder:
        self.fields["idempotency_key"] = key
        return self

    def state(self, state: TaskState) -> TaskBuilder:
        self.fields["state"] = state
        return self

    def at(self, created: datetime) -> TaskBuilder:
        self.fields["created_at"] = created
        self.fields["updated_at"] = created
        return self

    def build(self) -> Task:
        task_id = uuid.uuid4().hex
        n = next(_ids)
        values: dict[str, Any] = {
            "id": task_id,
            "spec": TaskSpec(**self.spec),
            "state": TaskState.PENDING,
            "created_at": T0 + timedelta(seconds=n),
            "updated_at": T0 + timedelta(seconds=n),
        }
        values.update(self.fields)
        return Task(**values)

    def new(self, request_hash: str | None = "h1") -> NewTask:
        return NewTask(self.build(), request_hash)


def task() -> TaskBuilder:
    return TaskBuilder()


def created_event(t: Task) -> TaskEvent:
    return TaskEvent(task_id=t.id, at=t.created_at, type="created", to_state=t.state)


def attempt(t: Task, number: int = 1, **changes: Any) -> Attempt:
    base = Attempt(task_id=t.id, number=number, state=AttemptState.STARTING, node="node-1", created_at=T0)
    return replace(base, **changes)


def tenant(name: str = "acme", **changes: Any) -> Tenant:
    """A stored-looking tenant: every field set (timestamps too), ``changes`` applied."""
    base = Tenant(
        name=name,
        quota=Quota(millicpu=8000, memory=16 << 30, gpu=1, max_running=10, max_pending=1000),
        weight=2.5,
        pools=("default", "gpu"),
        priority_min=-10,
        priority_max=100,
        borrowing=False,
        created_at=T0,
        updated_at=T0,
    )
    return replace(base, **changes)


_reservation_ids = itertools.count(1)


def reservation(tenant: str = "acme", **changes: Any) -> Reservation:
    """A pending reservation of two 1-cpu slots, ``changes`` applied."""
    base = Reservation(
        id=f"r{next(_reservation_ids):06d}",
        tenant=tenant,
        pool="default",
        resources=Resources(1000, 1 << 30),
        count=2,
        state=ReservationState.PENDING,
        created_at=T0,
        updated_at=T0,
    )
    return replace(base, **changes)


_key_ids = itertools.count(1)


def api_key(tenant: str = "acme", **changes: Any) -> ApiKey:
    """A live key of ``tenant`` with the built-in ``submitter`` role, ``changes`` applied."""
    n = next(_key_ids)
    base = ApiKey(
        id=f"k{n:011d}",
        secret_hash=f"hash-{n}",
        owner="alice@example.com",
        tenant=tenant,
        roles=("submitter",),
        created_at=T0 + timedelta(seconds=n),
        created_by="key:admin",
    )
    return replace(base, **changes)


def custom_role(name: str = "auditor", *rules: tuple[str, str], **changes: Any) -> StoredRole:
    """A stored custom role (by default: read the audit log), ``changes`` applied to the ``StoredRole``."""
    role = Role(name, frozenset(rules or {("get", "audit"), ("list", "audit")}), f"the {name} role")
    return replace(StoredRole(role, created_at=T0, created_by="key:admin"), **changes)


_binding_ids = itertools.count(1)


def binding(subject: str = "oidc:alice", tenant: str = "acme", role: str = "viewer", **changes: Any) -> RoleBinding:
    """A binding of ``role`` in ``tenant`` to ``subject``, created after every earlier one."""
    n = next(_binding_ids)
    base = RoleBinding(
        f"b{n:011d}", subject, tenant, role, created_at=T0 + timedelta(seconds=n), created_by="key:admin"
    )
    return replace(base, **changes)


_request_ids = itertools.count(1)


def entry(action: str = "tasks.create", tenant: str | None = "acme", **changes: Any) -> AuditEntry:
    """A successful audit entry of a request of its own, ``changes`` applied."""
    n = next(_request_ids)
    base = AuditEntry(
        at=T0 + timedelta(milliseconds=n),
        request_id=f"req-{n}",
        principal="key:k1",
        tenant=tenant,
        action=action,
        resource=f"{action.split('.')[0]}/{n}",
        outcome=AuditOutcome.SUCCESS,
        status=200,
        source="10.0.0.1",
        detail={"n": n},
    )
    return replace(base, **changes)
