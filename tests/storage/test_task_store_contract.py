"""The TaskStore contract, run against every implementation (SQLite and PostgreSQL, see conftest.py)."""

from __future__ import annotations

import asyncio
import base64
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from taskplane.domain.resources import Resources
from taskplane.domain.task import (
    AttemptState,
    FailureClass,
    PendingReason,
    RetryPolicy,
    Task,
    TaskSpec,
    TaskState,
    Timeouts,
)
from taskplane.errors import (
    ConflictError,
    IdempotencyConflictError,
    InvalidRequestError,
    NotFoundError,
    UnavailableError,
)
from taskplane.services.ports import ChangeSet, NewTask, TaskEvent, TaskFilter
from taskplane.storage import SqlTaskStore, create_task_store, upgrade_database
from tests.storage.conftest import T0, attempt, created_event, task


def full_task() -> Task:
    """A task with every field set to something other than its default."""
    spec = TaskSpec(
        command=("python", "-c", "print('é ✓')"),
        shell=True,
        env={"A": "1", "UNICODE": "ünï"},
        workdir="sub/dir",
        image="docker.io/library/python:3.12",
        resources=Resources(millicpu=1500, memory=3 << 30, gpu=2, extended=(("example.com/fpga", 1), ("x/y", 7))),
        priority=-7,
        tenant="acme",
        labels={"team": "data", "env": "prod"},
        timeouts=Timeouts(queue=30.5, run=600.0, deadline=T0 + timedelta(days=1, microseconds=7)),
        retry=RetryPolicy(
            max_attempts=5,
            backoff_initial=0.5,
            backoff_max=60.0,
            backoff_multiplier=3.0,
            jitter=0.0,
            retry_on=frozenset({FailureClass.TIMEOUT, FailureClass.INFRA, FailureClass.USER}),
            max_infra_attempts=9,
        ),
        name="nightly-etl",
        pool="gpu",
        node_selector={"zone": "a", "disk": "ssd"},
        reservation="r-123",
        simulated_duration=12.5,
    )
    return Task(
        id="0123456789abcdefghjkmnpqrs",
        spec=spec,
        state=TaskState.RUNNING,
        created_at=T0,
        updated_at=T0 + timedelta(seconds=5),
        idempotency_key="key-1",
        attempts=3,
        infra_failures=1,
        not_before=T0 + timedelta(seconds=90),
        pending_reason=PendingReason(
            code="backoff", message="retrying later", resource="cpu", until=T0 + timedelta(seconds=90)
        ),
        failure_class=FailureClass.INFRA,
        exit_code=137,
        message="killed",
        started_at=T0 + timedelta(seconds=2),
        finished_at=T0 + timedelta(seconds=4),
        cancel_requested=True,
    )


# ------------------------------------------------------------------------------------------ round trips


async def test_every_task_field_round_trips(store: SqlTaskStore) -> None:
    original = full_task()
    [result] = await store.create_tasks([NewTask(original, "hash")], [created_event(original)])

    assert result.created
    assert result.task.seq > 0
    assert result.task == replace(original, seq=result.task.seq)
    assert await store.get_task(original.id) == result.task


async def test_defaults_round_trip(store: SqlTaskStore) -> None:
    minimal = Task(id="t1", spec=TaskSpec(command=("true",)), state=TaskState.PENDING, created_at=T0, updated_at=T0)
    [result] = await store.create_tasks([NewTask(minimal)], [])

    assert await store.get_task("t1") == replace(minimal, seq=result.task.seq)


async def test_timestamps_keep_microseconds_and_come_back_in_utc(store: SqlTaskStore) -> None:
    tz = datetime(2025, 1, 1, 1, 2, 3, 999999, tzinfo=UTC).astimezone(ZoneInfo("America/New_York"))
    t = replace(task().build(), created_at=tz, updated_at=tz)
    await store.create_tasks([NewTask(t)], [])

    got = await store.get_task(t.id)
    assert got is not None
    assert got.created_at == tz
    assert got.created_at.tzinfo is UTC
    assert got.created_at.microsecond == 999999


async def test_attempts_and_events_round_trip(store: SqlTaskStore) -> None:
    t = task().build()
    await store.create_tasks([NewTask(t)], [created_event(t)])
    first = attempt(
        t,
        1,
        state=AttemptState.FAILED,
        started_at=T0 + timedelta(seconds=1),
        finished_at=T0 + timedelta(seconds=2),
        pid=4242,
        exit_code=None,
        signal=9,
        failure_class=FailureClass.INFRA,
        message="oom",
        peak_memory=5 << 40,
        cpu_seconds=1.25,
        log_truncated=True,
    )
    second = attempt(t, 2)
    event = TaskEvent(
        task_id=t.id,
        at=T0 + timedelta(seconds=3),
        type="exited",
        from_state=TaskState.RUNNING,
        to_state=TaskState.PENDING,
        attempt=1,
        data={"exit_code": None, "signal": 9, "nested": {"a": [1, 2]}},
    )

    await store.apply(ChangeSet(new_attempts=[second, first], events=[event]))

    assert await store.get_attempts(t.id) == [first, second]
    events = await store.get_events(t.id)
    assert [e.type for e in events] == ["created", "exited"]
    assert events[0].seq < events[1].seq
    assert replace(events[1], seq=0) == event
    assert await store.get_events(t.id, limit=1) == events[:1]


async def test_missing_things_are_empty(store: SqlTaskStore) -> None:
    assert await store.get_task("nope") is None
    assert await store.get_attempts("nope") == []
    assert await store.get_events("nope") == []


# ------------------------------------------------------------------------------------------ idempotency


async def test_same_key_and_hash_returns_the_stored_task(store: SqlTaskStore) -> None:
    first = task().tenant("a").key("k").new("h1")
    [made] = await store.create_tasks([first], [created_event(first.task)])
    replay = task().tenant("a").key("k").new("h1")

    [again] = await store.create_tasks([replay], [created_event(replay.task)])

    assert not again.created
    assert again.task == made.task
    assert await store.get_task(replay.task.id) is None
    assert await store.get_events(replay.task.id) == []
    assert await store.count_tasks() == 1


async def test_same_key_with_another_hash_is_a_conflict(store: SqlTaskStore) -> None:
    await store.create_tasks([task().tenant("a").key("k").new("h1")], [])

    with pytest.raises(IdempotencyConflictError):
        await store.create_tasks([task().tenant("a").key("k").new("h2")], [])


async def test_keys_are_scoped_by_tenant(store: SqlTaskStore) -> None:
    results = await store.create_tasks([task().tenant("a").key("k").new(), task().tenant("b").key("k").new()], [])

    assert [r.created for r in results] == [True, True]


async def test_a_batch_with_one_conflict_writes_nothing(store: SqlTaskStore) -> None:
    await store.create_tasks([task().key("taken").new("h1")], [])
    batch = [task().new(), task().key("fresh").new(), task().key("taken").new("other")]

    with pytest.raises(IdempotencyConflictError):
        await store.create_tasks(batch, [created_event(n.task) for n in batch])

    for item in batch:
        assert await store.get_task(item.task.id) is None
        assert await store.get_events(item.task.id) == []
    assert await store.count_tasks() == 1
    [fresh] = await store.create_tasks([task().key("fresh").new()], [])
    assert fresh.created


async def test_results_follow_input_order_with_replays_mixed_in(store: SqlTaskStore) -> None:
    [old] = await store.create_tasks([task().key("old").new()], [])
    batch = [task().new(), task().key("old").new(), task().key("dup").new(), task().key("dup").new()]

    results = await store.create_tasks(batch, [created_event(n.task) for n in batch])

    assert [r.created for r in results] == [True, False, True, False]
    assert results[0].task.id == batch[0].task.id
    assert results[1].task == old.task
    assert results[3].task == results[2].task
    assert await store.get_events(batch[3].task.id) == []
    assert [e.type for e in await store.get_events(batch[2].task.id)] == ["created"]


async def test_a_key_repeated_in_a_batch_with_another_hash_is_a_conflict(store: SqlTaskStore) -> None:
    batch = [task().key("dup").new("h1"), task().key("dup").new("h2")]

    with pytest.raises(IdempotencyConflictError):
        await store.create_tasks(batch, [])

    assert await store.count_tasks() == 0


async def test_concurrent_creates_of_one_key_create_one_task(store: SqlTaskStore, store_url: str) -> None:
    other = create_task_store(store_url)  # a second store: a second process, in effect
    try:
        attempts = [task().tenant("t").key("race").new("same") for _ in range(8)]
        stores = [store, other] * 4

        results = await asyncio.gather(*(s.create_tasks([n], []) for s, n in zip(stores, attempts, strict=True)))

        flat = [r for [r] in results]
        assert sum(r.created for r in flat) == 1
        assert len({r.task.id for r in flat}) == 1
        assert await store.count_tasks() == 1
    finally:
        await other.close()


async def test_a_task_id_that_exists_already_is_a_conflict(store: SqlTaskStore) -> None:
    t = task().build()
    await store.create_tasks([NewTask(t)], [])

    with pytest.raises(ConflictError):
        await store.create_tasks([task().new(), NewTask(replace(t, spec=TaskSpec(command=("other",))))], [])
    with pytest.raises(ConflictError):  # also when the batch has idempotency keys (it is retried, then refused)
        await store.create_tasks([task().key("k").new(), NewTask(t)], [])

    assert await store.count_tasks() == 1


async def test_seq_increases_in_creation_order(store: SqlTaskStore) -> None:
    first = await store.create_tasks([task().new() for _ in range(3)], [])
    second = await store.create_tasks([task().new() for _ in range(2)], [])

    seqs = [c.task.seq for c in first + second]
    assert seqs == sorted(seqs)
    assert len(set(seqs)) == 5


async def test_a_batch_of_a_thousand(store: SqlTaskStore) -> None:
    batch = [task().labels(n=str(i % 7)).new() for i in range(1000)]

    results = await store.create_tasks(batch, [created_event(n.task) for n in batch])

    assert all(r.created for r in results)
    assert await store.count_tasks() == 1000
    with pytest.raises(InvalidRequestError):
        await store.create_tasks([task().new() for _ in range(1001)], [])


# ------------------------------------------------------------------------------------------------ apply


async def test_apply_updates_rows_and_appends_events(store: SqlTaskStore) -> None:
    t = task().labels(team="x").key("k").build()
    [made] = await store.create_tasks([NewTask(t, "h")], [created_event(t)])
    running = replace(
        made.task,
        state=TaskState.RUNNING,
        attempts=1,
        updated_at=T0 + timedelta(minutes=1),
        started_at=T0 + timedelta(minutes=1),
        pending_reason=None,
    )
    launched = attempt(t, 1)

    await store.apply(
        ChangeSet(
            tasks=[running],
            new_attempts=[launched],
            events=[TaskEvent(t.id, running.updated_at, "running", TaskState.PENDING, TaskState.RUNNING, 1)],
        )
    )
    done = replace(
        running,
        state=TaskState.FAILED,
        failure_class=FailureClass.USER,
        exit_code=3,
        message="exit 3",
        finished_at=T0 + timedelta(minutes=2),
        updated_at=T0 + timedelta(minutes=2),
        pending_reason=PendingReason("x", "y"),
        not_before=T0,
        infra_failures=2,
        cancel_requested=True,
    )
    ended = replace(launched, state=AttemptState.FAILED, exit_code=3, failure_class=FailureClass.USER, pid=7)
    await store.apply(ChangeSet(tasks=[done], attempts=[ended]))

    assert await store.get_task(t.id) == done
    assert await store.get_attempts(t.id) == [ended]
    assert [e.type for e in await store.get_events(t.id)] == ["created", "running"]


async def test_apply_keeps_write_once_columns(store: SqlTaskStore) -> None:
    t = task().labels(team="x").key("k").build()
    [made] = await store.create_tasks([NewTask(t, "h")], [])
    meddled = replace(
        made.task, spec=replace(t.spec, tenant="other", labels={}), idempotency_key=None, created_at=T0, seq=999
    )

    await store.apply(ChangeSet(tasks=[meddled]))

    assert await store.get_task(t.id) == made.task


async def test_apply_of_many_tasks_in_one_change_set(store: SqlTaskStore) -> None:
    made = await store.create_tasks([task().new() for _ in range(300)], [])
    admitted = [replace(c.task, state=TaskState.ADMITTED, updated_at=T0 + timedelta(hours=1)) for c in made]

    await store.apply(
        ChangeSet(
            tasks=admitted,
            new_attempts=[attempt(t, 1) for t in admitted],
            events=[TaskEvent(t.id, T0, "admitted", TaskState.PENDING, TaskState.ADMITTED) for t in admitted],
        )
    )

    page = await store.list_tasks(TaskFilter(states=frozenset({TaskState.ADMITTED})), 1000, None)
    assert len(page.items) == 300


async def test_an_empty_change_set_is_a_no_op(store: SqlTaskStore) -> None:
    await store.apply(ChangeSet())


async def test_apply_is_all_or_nothing(store: SqlTaskStore) -> None:
    t = task().build()
    [made] = await store.create_tasks([NewTask(t)], [])
    await store.apply(ChangeSet(new_attempts=[attempt(t, 1)]))
    moved = replace(made.task, state=TaskState.ADMITTED)

    with pytest.raises(ConflictError):  # attempt 1 exists: the number is a fencing token
        await store.apply(
            ChangeSet(tasks=[moved], new_attempts=[attempt(t, 1)], events=[TaskEvent(t.id, T0, "admitted")])
        )

    assert await store.get_task(t.id) == made.task
    assert await store.get_events(t.id) == []


async def test_apply_to_a_missing_task_writes_nothing(store: SqlTaskStore) -> None:
    t = task().build()
    [made] = await store.create_tasks([NewTask(t)], [])
    ghost = task().build()

    with pytest.raises(NotFoundError):
        await store.apply(ChangeSet(tasks=[replace(made.task, state=TaskState.ADMITTED), ghost]))
    with pytest.raises(NotFoundError):
        await store.apply(ChangeSet(attempts=[attempt(t, 5)]))

    assert await store.get_task(t.id) == made.task


# ----------------------------------------------------------------------------------------------- listing


async def _seed_for_listing(store: SqlTaskStore) -> list[Task]:
    specs = [
        task().tenant("a").labels(team="x", env="prod").at(T0 + timedelta(hours=1)),
        task().tenant("a").labels(team="x", env="dev").at(T0 + timedelta(hours=2)),
        task().tenant("b").labels(team="y").at(T0 + timedelta(hours=3)).state(TaskState.RUNNING),
        task().tenant("b").at(T0 + timedelta(hours=4)).state(TaskState.SUCCEEDED),
        task().tenant("a").labels(team="x").at(T0 + timedelta(hours=5)).state(TaskState.FAILED),
    ]
    results = await store.create_tasks([b.new() for b in specs], [])
    return [r.task for r in results]


async def test_list_is_newest_first_and_filters_combine(store: SqlTaskStore) -> None:
    t = await _seed_for_listing(store)

    async def ids(**filters: object) -> list[str]:
        page = await store.list_tasks(TaskFilter(**filters), 100, None)  # type: ignore[arg-type]
        assert page.next_cursor is None
        return [x.id for x in page.items]

    assert await ids() == [x.id for x in reversed(t)]
    assert await ids(tenant="b") == [t[3].id, t[2].id]
    assert await ids(states=frozenset({TaskState.PENDING, TaskState.RUNNING})) == [t[2].id, t[1].id, t[0].id]
    assert await ids(labels={"team": "x"}) == [t[4].id, t[1].id, t[0].id]
    assert await ids(labels={"team": "x", "env": "prod"}) == [t[0].id]
    assert await ids(labels={"team": "x", "env": "nope"}) == []
    assert await ids(created_after=T0 + timedelta(hours=2), created_before=T0 + timedelta(hours=4)) == [
        t[2].id,
        t[1].id,
    ]
    assert await ids(tenant="a", labels={"team": "x"}, states=frozenset({TaskState.FAILED})) == [t[4].id]


@pytest.mark.parametrize("page_size", [1, 3, 7, 25])
async def test_pages_have_no_duplicates_or_gaps(store: SqlTaskStore, page_size: int) -> None:
    made = await store.create_tasks([task().labels(k="v" if i % 2 else "w").new() for i in range(25)], [])
    expected = [c.task.id for c in reversed(made) if c.task.spec.labels["k"] == "v"]

    seen: list[str] = []
    cursor: str | None = None
    pages = 0
    while True:
        page = await store.list_tasks(TaskFilter(labels={"k": "v"}), page_size, cursor)
        pages += 1
        assert len(page.items) <= page_size
        seen.extend(x.id for x in page.items)
        if page.next_cursor is None:
            break
        cursor = page.next_cursor

    assert seen == expected
    assert pages == -(-len(expected) // page_size)


async def test_tasks_created_after_a_page_do_not_shift_later_pages(store: SqlTaskStore) -> None:
    made = await store.create_tasks([task().new() for _ in range(6)], [])
    first = await store.list_tasks(TaskFilter(), 3, None)
    await store.create_tasks([task().new() for _ in range(4)], [])

    second = await store.list_tasks(TaskFilter(), 3, first.next_cursor)

    assert [x.id for x in first.items + second.items] == [c.task.id for c in reversed(made)]
    assert second.next_cursor is None


@pytest.mark.parametrize(
    "cursor",
    [
        "",
        "!!!",
        "not base64 at all",
        base64.urlsafe_b64encode(b"abc").decode(),
        base64.urlsafe_b64encode(b"-5").decode(),
        base64.urlsafe_b64encode(b"0").decode(),
        base64.urlsafe_b64encode(b"99999999999999999999999").decode(),
        base64.urlsafe_b64encode(b"\xff\xfe").decode(),
    ],
)
async def test_a_malformed_cursor_is_an_invalid_request(store: SqlTaskStore, cursor: str) -> None:
    with pytest.raises(InvalidRequestError) as info:
        await store.list_tasks(TaskFilter(), 10, cursor)
    assert info.value.code == "invalid_cursor"


async def test_load_unfinished_returns_live_work_oldest_first(store: SqlTaskStore) -> None:
    t = await _seed_for_listing(store)
    done = attempt(t[3], 1, state=AttemptState.SUCCEEDED, exit_code=0)
    live = attempt(t[2], 2, state=AttemptState.RUNNING)
    await store.apply(ChangeSet(new_attempts=[attempt(t[2], 1, state=AttemptState.FAILED), live, done]))

    tasks, attempts = await store.load_unfinished()

    assert [x.id for x in tasks] == [t[0].id, t[1].id, t[2].id]
    assert attempts == [live]


# ------------------------------------------------------------------------------------------------- misc


async def test_next_epoch_increases_by_one_even_concurrently(store: SqlTaskStore) -> None:
    first = await store.next_epoch()
    rest = await asyncio.gather(*(store.next_epoch() for _ in range(8)))

    assert first >= 1
    assert sorted(rest) == list(range(first + 1, first + 9))


@pytest.mark.parametrize("where", ["task", "deadline", "pending_reason", "filter", "attempt", "event"])
async def test_naive_datetimes_are_refused(store: SqlTaskStore, where: str) -> None:
    naive = datetime(2025, 1, 1, 12, 0, 0)
    t = task().build()
    if where == "filter":
        with pytest.raises(InvalidRequestError) as info:
            await store.list_tasks(TaskFilter(created_after=naive), 10, None)
        assert info.value.code == "naive_datetime"
        return
    if where in ("attempt", "event"):
        await store.create_tasks([NewTask(t)], [])
        changes = (
            ChangeSet(new_attempts=[attempt(t, 1, created_at=naive)])
            if where == "attempt"
            else ChangeSet(events=[TaskEvent(t.id, naive, "x")])
        )
        with pytest.raises(InvalidRequestError) as info:
            await store.apply(changes)
        assert info.value.code == "naive_datetime"
        assert await store.get_attempts(t.id) == []
        return
    if where == "task":
        t = replace(t, updated_at=naive)
    elif where == "deadline":
        t = replace(t, spec=replace(t.spec, timeouts=Timeouts(deadline=naive)))
    else:
        t = replace(t, pending_reason=PendingReason("backoff", "later", until=naive))
    with pytest.raises(InvalidRequestError) as info:
        await store.create_tasks([NewTask(t)], [])
    assert info.value.code == "naive_datetime"
    assert await store.count_tasks() == 0


async def test_ping_answers(store: SqlTaskStore) -> None:
    await store.ping()


async def test_a_closed_store_is_unavailable(store_url: str) -> None:
    s = create_task_store(store_url)
    await s.ping()
    await s.close()
    await s.close()

    with pytest.raises(UnavailableError):
        await s.get_task("x")


async def test_upgrade_is_idempotent(store_url: str) -> None:
    upgrade_database(store_url)
    s = create_task_store(store_url)
    try:
        await s.ping()
    finally:
        await s.close()
