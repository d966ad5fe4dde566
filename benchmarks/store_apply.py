"""SqlTaskStore write throughput: create_tasks in batches of 1,000 and apply() of 100-task change sets.

    .venv/bin/python benchmarks/store_apply.py                      # SQLite (temp file) and PostgreSQL
    .venv/bin/python benchmarks/store_apply.py --only sqlite --batches 20 --change-sets 200
    TASKPLANE_BENCH_DATABASE_URL=postgresql+psycopg://user@host/db .venv/bin/python benchmarks/store_apply.py

Each created task carries two labels and a "created" event; each apply() change set moves 100 tasks
(full row update), inserts 100 attempts and 100 events, all in one transaction: the dispatcher's hot path.
SQLite runs with synchronous=FULL, so every commit is durable. PostgreSQL gets a throw-away schema.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from datetime import UTC, datetime, timedelta

from sqlalchemy import create_engine, make_url, text

from taskplane.domain.resources import Resources
from taskplane.domain.task import Attempt, AttemptState, Task, TaskSpec, TaskState
from taskplane.services.ports import ChangeSet, NewTask, TaskEvent
from taskplane.storage import create_task_store, upgrade_database

T0 = datetime(2025, 1, 1, tzinfo=UTC)
DEFAULT_PG = "postgresql+psycopg://postgres@127.0.0.1:5432/test"


def make_task(i: int) -> Task:
    spec = TaskSpec(
        command=("python", "-c", "print(42)"),
        env={"A": "1"},
        resources=Resources(millicpu=500, memory=256 << 20),
        tenant=f"tenant-{i % 4}",
        labels={"team": f"t{i % 10}", "env": "bench"},
    )
    now = T0 + timedelta(microseconds=i)
    return Task(id=uuid.uuid4().hex, spec=spec, state=TaskState.PENDING, created_at=now, updated_at=now)


async def run(url: str, batches: int, change_sets: int) -> dict[str, float]:
    upgrade_database(url)
    store = create_task_store(url)
    try:
        # create_tasks: batches of 1,000
        created: list[Task] = []
        durations = []
        for b in range(batches):
            tasks = [make_task(b * 1000 + i) for i in range(1000)]
            new = [NewTask(t, None) for t in tasks]
            events = [TaskEvent(t.id, t.created_at, "created", None, TaskState.PENDING) for t in tasks]
            start = time.perf_counter()
            results = await store.create_tasks(new, events)
            durations.append(time.perf_counter() - start)
            created.extend(r.task for r in results)
        create_rate = 1000 * batches / sum(durations)

        # apply: change sets of 100 tasks (update + new attempt + event each)
        apply_durations = []
        now = T0 + timedelta(hours=1)
        for c in range(change_sets):
            chunk = created[(c * 100) % len(created) :][:100]
            number = c * 100 // len(created) + 1
            moved = [replace(t, state=TaskState.STARTING, attempts=number, updated_at=now) for t in chunk]
            changes = ChangeSet(
                tasks=moved,
                new_attempts=[Attempt(t.id, number, AttemptState.STARTING, "node-1", now) for t in chunk],
                events=[TaskEvent(t.id, now, "starting", TaskState.PENDING, TaskState.STARTING, number) for t in chunk],
            )
            start = time.perf_counter()
            await store.apply(changes)
            apply_durations.append(time.perf_counter() - start)
        apply_total = sum(apply_durations)
        return {
            "create_tasks_per_s": create_rate,
            "create_batch_ms_p50": statistics.median(durations) * 1000,
            "apply_tasks_per_s": 100 * change_sets / apply_total,
            "apply_change_sets_per_s": change_sets / apply_total,
            "apply_ms_p50": statistics.median(apply_durations) * 1000,
        }
    finally:
        await store.close()


@contextmanager
def sqlite_url() -> Iterator[str]:
    with tempfile.TemporaryDirectory(prefix="taskplane-bench-") as tmp:
        yield f"sqlite:///{tmp}/bench.db"


@contextmanager
def postgres_url(base: str) -> Iterator[str]:
    schema = f"tp_bench_{uuid.uuid4().hex[:10]}"
    admin = create_engine(base, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    try:
        yield make_url(base).update_query_dict({"options": f"-csearch_path={schema}"}).render_as_string(False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", choices=["sqlite", "postgres"])
    parser.add_argument("--batches", type=int, default=10, help="create_tasks batches of 1,000 (default 10)")
    parser.add_argument("--change-sets", type=int, default=100, help="apply() calls of 100 tasks (default 100)")
    args = parser.parse_args()
    pg = os.environ.get("TASKPLANE_BENCH_DATABASE_URL", os.environ.get("TASKPLANE_TEST_DATABASE_URL", DEFAULT_PG))
    targets = [("sqlite", sqlite_url), ("postgres", lambda: postgres_url(pg))]
    for name, make in targets:
        if args.only and name != args.only:
            continue
        try:
            with make() as url:
                figures = asyncio.run(run(url, args.batches, args.change_sets))
        except Exception as exc:
            print(f"{name:9s} skipped: {exc}")
            continue
        print(
            f"{name:9s} create_tasks: {figures['create_tasks_per_s']:9,.0f} tasks/s "
            f"(batch of 1,000: p50 {figures['create_batch_ms_p50']:.1f} ms) | "
            f"apply: {figures['apply_tasks_per_s']:9,.0f} tasks/s "
            f"({figures['apply_change_sets_per_s']:,.0f} change sets/s, p50 {figures['apply_ms_p50']:.2f} ms)"
        )


if __name__ == "__main__":
    main()
