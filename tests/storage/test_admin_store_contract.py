"""The AdminStore contract (tenants, reservations, usage) and reservations in ``apply``, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from datetime import datetime, timedelta

import pytest
from sqlalchemy import update

from taskplane.domain.reservation import ReservationState
from taskplane.domain.resources import Resources
from taskplane.domain.task import AttemptState, TaskState
from taskplane.domain.tenant import Quota, Tenant
from taskplane.errors import ConflictError, InvalidRequestError, NotFoundError
from taskplane.services.ports import ChangeSet, NewTask, UsageRow
from taskplane.storage import SqlTaskStore
from taskplane.storage.sql import codec
from taskplane.storage.sql.engine import WRITE_OPTION, create_sql_engine
from taskplane.storage.sql.tables import meta, tasks
from tests.storage.conftest import T0, attempt, reservation, task, tenant

# ----------------------------------------------------------------------------------------------- tenants


async def test_a_tenant_round_trips_with_every_field(store: SqlTaskStore) -> None:
    original = tenant("acme")

    assert await store.create_tenant(original) == original
    assert await store.get_tenant("acme") == original


async def test_unlimited_quota_and_all_pools_round_trip_as_none(store: SqlTaskStore) -> None:
    open_tenant = Tenant("open", created_at=T0, updated_at=T0)
    no_pools = tenant("none", pools=())

    await store.create_tenant(open_tenant)
    await store.create_tenant(no_pools)

    assert await store.get_tenant("open") == open_tenant
    stored = await store.get_tenant("none")
    assert stored is not None
    assert stored.pools == ()  # no pool allowed is not the same as every pool


async def test_tenants_are_listed_by_name(store: SqlTaskStore) -> None:
    for name in ("zeta", "alpha", "default", "mid"):
        await store.create_tenant(tenant(name))

    assert [t.name for t in await store.list_tenants()] == ["alpha", "default", "mid", "zeta"]


async def test_a_missing_tenant_is_none_and_none_are_listed(store: SqlTaskStore) -> None:
    assert await store.get_tenant("nope") is None
    assert await store.list_tenants() == []


async def test_a_taken_name_is_a_conflict(store: SqlTaskStore) -> None:
    await store.create_tenant(tenant("acme"))

    with pytest.raises(ConflictError) as info:
        await store.create_tenant(tenant("acme", weight=9.0))

    assert info.value.code == "tenant_exists"
    assert await store.get_tenant("acme") == tenant("acme")


async def test_concurrent_creates_of_one_name_make_one_tenant(store: SqlTaskStore) -> None:
    results = await asyncio.gather(*(store.create_tenant(tenant("race")) for _ in range(6)), return_exceptions=True)

    assert sum(isinstance(r, Tenant) for r in results) == 1
    assert all(isinstance(r, Tenant) or (isinstance(r, ConflictError) and r.code == "tenant_exists") for r in results)


async def test_update_replaces_everything_but_created_at(store: SqlTaskStore) -> None:
    await store.create_tenant(tenant("acme"))
    later = T0 + timedelta(hours=1)
    changed = Tenant(
        "acme",
        quota=Quota(millicpu=1000, max_pending=5),
        weight=0.5,
        pools=None,
        priority_min=0,
        priority_max=0,
        borrowing=True,
        created_at=None,  # the caller need not know it: the stored one is kept
        updated_at=later,
    )

    updated = await store.update_tenant(changed)

    assert updated == replace(changed, created_at=T0)
    assert await store.get_tenant("acme") == updated


async def test_updating_a_missing_tenant_is_not_found(store: SqlTaskStore) -> None:
    with pytest.raises(NotFoundError) as info:
        await store.update_tenant(tenant("ghost"))

    assert info.value.code == "tenant_not_found"
    assert await store.get_tenant("ghost") is None


async def test_timestamps_are_required(store: SqlTaskStore) -> None:
    with pytest.raises(InvalidRequestError) as info:
        await store.create_tenant(Tenant("acme"))
    assert info.value.code == "missing_timestamp"
    await store.create_tenant(tenant("acme"))
    with pytest.raises(InvalidRequestError) as info:
        await store.update_tenant(tenant("acme", updated_at=None))
    assert info.value.code == "missing_timestamp"


async def test_delete_removes_an_idle_tenant(store: SqlTaskStore) -> None:
    await store.create_tenant(tenant("acme"))
    finished = [task().tenant("acme").state(s).new() for s in (TaskState.SUCCEEDED, TaskState.FAILED)]
    await store.create_tasks(finished, [])
    await store.create_reservation(reservation("acme", state=ReservationState.RELEASED))
    await store.create_reservation(reservation("acme", state=ReservationState.EXPIRED))

    await store.delete_tenant("acme")

    assert await store.get_tenant("acme") is None
    with pytest.raises(NotFoundError) as info:
        await store.delete_tenant("acme")
    assert info.value.code == "tenant_not_found"


@pytest.mark.parametrize("state", [s for s in TaskState if not s.terminal])
async def test_delete_refuses_a_tenant_with_an_unfinished_task(store: SqlTaskStore, state: TaskState) -> None:
    await store.create_tenant(tenant("acme"))
    await store.create_tasks([task().tenant("acme").state(state).new()], [])

    with pytest.raises(ConflictError) as info:
        await store.delete_tenant("acme")

    assert info.value.code == "tenant_not_empty"
    assert await store.get_tenant("acme") == tenant("acme")


@pytest.mark.parametrize("state", [ReservationState.PENDING, ReservationState.ACTIVE])
async def test_delete_refuses_a_tenant_with_a_live_reservation(store: SqlTaskStore, state: ReservationState) -> None:
    await store.create_tenant(tenant("acme"))
    await store.create_reservation(reservation("acme", state=state))

    with pytest.raises(ConflictError) as info:
        await store.delete_tenant("acme")

    assert info.value.code == "tenant_not_empty"
    assert await store.get_tenant("acme") is not None


async def test_a_delete_waits_for_a_task_being_created_and_then_refuses(store: SqlTaskStore, store_url: str) -> None:
    await store.create_tenant(tenant("acme"))
    engine = create_sql_engine(store_url).execution_options(**{WRITE_OPTION: True})
    try:
        with engine.connect() as conn:
            creating = conn.begin()  # a create_tasks in flight: counter bumped, row inserted, not committed
            seq = conn.execute(
                update(meta).where(meta.c.key == "task_seq").values(value=meta.c.value + 1).returning(meta.c.value)
            ).scalar_one()
            conn.execute(tasks.insert(), codec.task_insert_row(task().tenant("acme").build(), seq, None))
            deleting = asyncio.create_task(store.delete_tenant("acme"))
            await asyncio.sleep(0.5)
            assert not deleting.done()  # it must not check before the creator commits
            creating.commit()
        with pytest.raises(ConflictError) as info:
            await deleting
    finally:
        engine.dispose()

    assert info.value.code == "tenant_not_empty"
    assert await store.get_tenant("acme") is not None


async def test_other_tenants_work_does_not_block_a_delete(store: SqlTaskStore) -> None:
    await store.create_tenant(tenant("acme"))
    await store.create_tasks([task().tenant("other").new()], [])
    await store.create_reservation(reservation("other"))

    await store.delete_tenant("acme")

    assert await store.get_tenant("acme") is None


# ------------------------------------------------------------------------------------------ reservations


async def test_a_reservation_round_trips_with_every_field(store: SqlTaskStore) -> None:
    original = reservation(
        "acme",
        pool="gpu",
        resources=Resources(2500, 3 << 30, 1, (("example.com/fpga", 2),)),
        count=4,
        state=ReservationState.ACTIVE,
        priority=-3,
        duration=3600.5,
        expires_at=T0 + timedelta(hours=2),
        activated_at=T0 + timedelta(minutes=1),
        ended_at=T0 + timedelta(hours=3),
        updated_at=T0 + timedelta(minutes=1),
        nodes=("n1", "n2", "n1", "n3"),
        message="held",
    )

    made = await store.create_reservation(original)

    assert made.seq > 0
    assert made == replace(original, seq=made.seq)
    assert await store.get_reservation(original.id) == made


async def test_reservation_defaults_round_trip(store: SqlTaskStore) -> None:
    made = await store.create_reservation(reservation())

    assert await store.get_reservation(made.id) == made
    assert await store.get_reservation("nope") is None


async def test_a_taken_reservation_id_is_a_conflict(store: SqlTaskStore) -> None:
    made = await store.create_reservation(reservation())

    with pytest.raises(ConflictError) as info:
        await store.create_reservation(replace(made, count=9))

    assert info.value.code == "reservation_exists"
    assert await store.get_reservation(made.id) == made


async def test_reservation_seqs_increase_and_listing_follows_them(store: SqlTaskStore) -> None:
    made = [
        await store.create_reservation(reservation("a")),
        await store.create_reservation(reservation("b", state=ReservationState.ACTIVE)),
        await store.create_reservation(reservation("a", state=ReservationState.RELEASED)),
        await store.create_reservation(reservation("a", state=ReservationState.ACTIVE)),
        await store.create_reservation(reservation("b", state=ReservationState.EXPIRED)),
    ]

    seqs = [r.seq for r in made]
    assert seqs == sorted(set(seqs))
    assert await store.list_reservations() == made
    assert await store.list_reservations(tenant="a") == [made[0], made[2], made[3]]
    assert await store.list_reservations(live_only=True) == [made[0], made[1], made[3]]
    assert await store.list_reservations(tenant="a", live_only=True) == [made[0], made[3]]
    assert await store.list_reservations(tenant="nobody") == []
    assert await store.load_reservations() == [made[0], made[1], made[3]]


async def test_apply_updates_stored_reservations_and_inserts_new_ones(store: SqlTaskStore) -> None:
    held = await store.create_reservation(reservation("acme"))
    later = T0 + timedelta(minutes=5)
    active = replace(
        held,
        state=ReservationState.ACTIVE,
        activated_at=later,
        expires_at=later + timedelta(hours=1),
        updated_at=later,
        nodes=("n1", "n2"),
        message=None,
        created_at=T0 + timedelta(days=9),  # written once: ignored
        seq=12345,  # assigned by the store: ignored
    )
    fresh = reservation("acme", pool="gpu")

    await store.apply(ChangeSet(reservations=[active, fresh]))

    assert await store.get_reservation(held.id) == replace(active, created_at=T0, seq=held.seq)
    stored_fresh = await store.get_reservation(fresh.id)
    assert stored_fresh is not None
    assert stored_fresh.seq > held.seq
    assert stored_fresh == replace(fresh, seq=stored_fresh.seq)
    assert [r.id for r in await store.load_reservations()] == [held.id, fresh.id]


async def test_apply_of_one_reservation_twice_keeps_the_last_row(store: SqlTaskStore) -> None:
    new = reservation("acme")
    released = replace(new, state=ReservationState.RELEASED, ended_at=T0, message="released")

    await store.apply(ChangeSet(reservations=[new, released]))

    stored = await store.get_reservation(new.id)
    assert stored == replace(released, seq=stored.seq if stored else 0)
    assert await store.load_reservations() == []


async def test_apply_writes_reservations_with_the_rest_or_not_at_all(store: SqlTaskStore) -> None:
    [made] = await store.create_tasks([task().new()], [])
    ghost = task().build()
    held = await store.create_reservation(reservation("acme"))
    changed = replace(held, state=ReservationState.ACTIVE)
    fresh = reservation("acme")

    with pytest.raises(NotFoundError):  # a task that does not exist fails the whole change set
        await store.apply(
            ChangeSet(tasks=[replace(made.task, state=TaskState.ADMITTED), ghost], reservations=[changed])
        )
    with pytest.raises(ConflictError):
        await store.apply(ChangeSet(new_attempts=[attempt(made.task, 1), attempt(made.task, 1)], reservations=[fresh]))

    assert await store.get_reservation(held.id) == held
    assert await store.get_reservation(fresh.id) is None


async def test_a_reservation_alone_is_a_change_set(store: SqlTaskStore) -> None:
    r = reservation("acme")
    changes = ChangeSet(reservations=[r])

    assert changes
    await store.apply(changes)
    assert await store.get_reservation(r.id) is not None


# ------------------------------------------------------------------------------------------------- usage

W0 = T0
W1 = T0 + timedelta(seconds=100)


def s(seconds: float) -> datetime:
    """``seconds`` after the window's start."""
    return W0 + timedelta(seconds=seconds)


async def _seed_usage(store: SqlTaskStore) -> None:
    a = task().tenant("a").resources(millicpu=1500, memory=1 << 30).build()
    b = task().tenant("a").pool("gpu").resources(millicpu=2000, gpu=2).build()
    c = task().tenant("b").resources(millicpu=500, memory=100).build()
    d = task().tenant("a").resources(millicpu=4000, memory=1 << 40, gpu=8).build()
    await store.create_tasks([NewTask(x) for x in (a, b, c, d)], [])
    done, running = AttemptState.SUCCEEDED, AttemptState.RUNNING
    await store.apply(
        ChangeSet(
            new_attempts=[
                # a: 30 s inside (began before the window), measured; then 60 s still running at the end.
                attempt(a, 1, state=done, started_at=s(-50), finished_at=s(30), cpu_seconds=20.0, peak_memory=100),
                attempt(a, 2, state=running, started_at=s(40)),
                # b: 10 s inside; it ends after the window, so its measurement belongs to a later one.
                attempt(b, 1, state=done, started_at=s(90), finished_at=s(150), cpu_seconds=5.0, peak_memory=500),
                # c: 10 s unmeasured; 5 s ending exactly at the window's end (measured, counted here);
                # and one that never started.
                attempt(c, 1, state=done, started_at=s(10), finished_at=s(20)),
                attempt(c, 2, state=done, started_at=s(95), finished_at=s(100), cpu_seconds=1.0),
                attempt(c, 3, state=AttemptState.FAILED, finished_at=s(50), cpu_seconds=99.0, peak_memory=9),
                # d: ended exactly at the start, started exactly at the end, or wholly before: none count.
                attempt(d, 1, state=done, started_at=s(-100), finished_at=s(0), cpu_seconds=7.0, peak_memory=7),
                attempt(d, 2, state=running, started_at=s(100)),
                attempt(d, 3, state=done, started_at=s(-300), finished_at=s(-200), cpu_seconds=3.0),
            ]
        )
    )


async def test_usage_adds_up_overlaps_per_tenant_and_pool(store: SqlTaskStore) -> None:
    await _seed_usage(store)

    rows = await store.usage(W0, W1)

    assert rows == [
        UsageRow(
            tenant="a",
            pool="default",
            attempts=2,
            cpu_seconds=pytest.approx(1.5 * (30 + 60)),
            memory_byte_seconds=pytest.approx((1 << 30) * 90),
            gpu_seconds=0.0,
            used_cpu_seconds=pytest.approx(20.0),
            peak_memory=100,
        ),
        UsageRow(
            tenant="a",
            pool="gpu",
            attempts=1,
            cpu_seconds=pytest.approx(2.0 * 10),
            memory_byte_seconds=0.0,
            gpu_seconds=pytest.approx(2 * 10),
            used_cpu_seconds=None,
            peak_memory=500,
        ),
        UsageRow(
            tenant="b",
            pool="default",
            attempts=2,
            cpu_seconds=pytest.approx(0.5 * (10 + 5)),
            memory_byte_seconds=pytest.approx(100 * 15),
            gpu_seconds=0.0,
            used_cpu_seconds=pytest.approx(1.0),
            peak_memory=None,
        ),
    ]


async def test_consecutive_windows_split_time_and_count_each_measurement_once(store: SqlTaskStore) -> None:
    await _seed_usage(store)
    cut = s(35)

    whole = {(r.tenant, r.pool): r for r in await store.usage(W0, W1)}
    halves = [{(r.tenant, r.pool): r for r in await store.usage(lo, hi)} for lo, hi in ((W0, cut), (cut, W1))]

    for key, row in whole.items():
        parts = [h[key] for h in halves if key in h]
        assert sum(p.cpu_seconds for p in parts) == pytest.approx(row.cpu_seconds)
        assert sum(p.memory_byte_seconds for p in parts) == pytest.approx(row.memory_byte_seconds)
        assert sum(p.gpu_seconds for p in parts) == pytest.approx(row.gpu_seconds)
        used = [p.used_cpu_seconds for p in parts if p.used_cpu_seconds is not None]
        assert (sum(used) if used else None) == row.used_cpu_seconds


async def test_later_windows_count_only_what_still_runs(store: SqlTaskStore) -> None:
    await _seed_usage(store)

    assert await store.usage(s(-1000), s(-500)) == []
    [row] = await store.usage(s(1000), s(2000))
    assert (row.tenant, row.pool, row.attempts, row.used_cpu_seconds) == ("a", "default", 2, None)
    assert row.cpu_seconds == pytest.approx((1.5 + 4.0) * 1000)
    assert row.gpu_seconds == pytest.approx(8 * 1000)


async def test_a_huge_request_over_a_long_window_does_not_overflow(store: SqlTaskStore) -> None:
    big = task().resources(millicpu=10**9, memory=2**60, gpu=10**6).build()
    await store.create_tasks([NewTask(big)], [])
    await store.apply(ChangeSet(new_attempts=[attempt(big, 1, state=AttemptState.RUNNING, started_at=s(0))]))

    [row] = await store.usage(W0, W0 + timedelta(days=365))

    year = 365 * 86400
    assert row.cpu_seconds == pytest.approx(10**6 * year)
    assert row.memory_byte_seconds == pytest.approx(2**60 * year)


@pytest.mark.parametrize(("start", "end"), [(W1, W0), (W0, W0)])
async def test_a_backwards_or_empty_window_is_refused(store: SqlTaskStore, start: datetime, end: datetime) -> None:
    with pytest.raises(InvalidRequestError) as info:
        await store.usage(start, end)
    assert info.value.code == "invalid_window"


async def test_a_naive_window_is_refused(store: SqlTaskStore) -> None:
    with pytest.raises(InvalidRequestError) as info:
        await store.usage(datetime(2025, 1, 1), W1)
    assert info.value.code == "naive_datetime"
