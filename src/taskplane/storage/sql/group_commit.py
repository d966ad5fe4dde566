"""Group commit: one writer thread applies the writes queued meanwhile in one transaction, one commit per batch.

    event loop:  write(action, body) --queue--> writer thread:  BEGIN IMMEDIATE
                                                                  SAVEPOINT; body_1(conn); RELEASE   (or ROLLBACK TO)
                                                                  SAVEPOINT; body_2(conn); RELEASE
                                                                  ...
                                                                COMMIT                  one fsync for the batch
                 <--one call_soon_threadsafe per batch--        settle every caller's future

Why: on SQLite each write is small (tens of microseconds in the database) while the hand-off between the event
loop and a worker thread costs far more, and every commit is an fsync. Batching the writes that queued while the
previous batch committed pays both once per batch instead of once per write. A caller's result is only given
back after the batch's ``COMMIT`` returned, so a 2xx still means durably committed.

Isolation between the writes of one batch: each body runs in its own SAVEPOINT, in queue order, and sees every
earlier body's writes (exactly as if they had been separate transactions committed one after the other). A body
that raises is rolled back to its savepoint and its caller gets the error; the others are unaffected. If the
``COMMIT`` itself fails, every caller of the batch gets that error and nothing of the batch is written.

``run(fn)`` queues a standalone call (``fn`` manages its own transaction, e.g. an import) that runs alone on the
writer thread, between batches.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from sqlalchemy import Connection, Engine

from taskplane.errors import UnavailableError
from taskplane.storage.sql.errors import translated

T = TypeVar("T")

log = logging.getLogger(__name__)

MAX_BATCH = 64
"""At most this many writes share one transaction (bounds the time one COMMIT holds the write lock)."""


@dataclass(slots=True)
class _Item:
    action: str
    body: Callable[[Connection], Any] | None  # None: a standalone call
    call: Callable[[], Any] | None
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[Any]


@dataclass(slots=True)
class _Outcome:
    future: asyncio.Future[Any]
    value: Any = None
    error: BaseException | None = None


class GroupCommitWriter:
    """A writer thread applying queued write bodies in shared transactions (see the module docstring)."""

    def __init__(self, engine: Engine, *, name: str, max_batch: int = MAX_BATCH) -> None:
        self._engine = engine
        self._max_batch = max_batch
        self._queue: queue.SimpleQueue[_Item | None] = queue.SimpleQueue()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    async def write(self, action: str, body: Callable[[Connection], T]) -> T:
        """``body(conn)`` committed in the next batch; its result, or its error (SQL errors translated)."""
        return await self._submit(action, body, None)  # type: ignore[no-any-return]

    async def run(self, action: str, call: Callable[[], T]) -> T:
        """``call()`` alone on the writer thread, between batches (it manages its own transaction)."""
        return await self._submit(action, None, call)  # type: ignore[no-any-return]

    async def _submit(
        self, action: str, body: Callable[[Connection], Any] | None, call: Callable[[], Any] | None
    ) -> Any:
        if self._closed:
            raise UnavailableError("the state store is closed")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        self._queue.put(_Item(action, body, call, loop, future))
        return await future

    def close(self) -> None:
        """Finish every queued write, then stop the thread (blocking; call from a worker thread)."""
        if self._closed:
            return
        self._closed = True
        self._queue.put(None)
        self._thread.join()

    # ------------------------------------------------------------------------------ writer thread

    def _run(self) -> None:
        stop = False
        while not stop:
            item = self._queue.get()
            if item is None:
                return
            batch = [item]
            while len(batch) < self._max_batch:
                try:
                    more = self._queue.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    stop = True
                    break
                batch.append(more)
            self._apply(batch)

    def _apply(self, batch: list[_Item]) -> None:
        pending: list[_Item] = []
        for item in batch:
            if item.call is None:
                pending.append(item)
                continue
            self._commit(pending)  # keep queue order: the writes queued before a standalone call go first
            pending = []
            self._settle([self._standalone(item)])
        self._commit(pending)

    @staticmethod
    def _standalone(item: _Item) -> _Outcome:
        assert item.call is not None
        try:
            return _Outcome(item.future, item.call())
        except BaseException as exc:  # handed to the caller
            return _Outcome(item.future, error=exc)

    def _commit(self, items: list[_Item]) -> None:
        if not items:
            return
        outcomes: list[_Outcome] = []
        try:
            with translated("commit a batch of writes"), self._engine.begin() as conn:
                for item in items:
                    outcomes.append(self._one(conn, item))
        except BaseException as exc:  # the COMMIT (or a savepoint command) failed: nothing of the batch holds
            if len(items) > 1:
                log.warning("a batch of %d state writes failed to commit: %s", len(items), exc)
            outcomes = [_Outcome(item.future, error=exc) for item in items]
        self._settle(outcomes)

    @staticmethod
    def _one(conn: Connection, item: _Item) -> _Outcome:
        assert item.body is not None
        savepoint = conn.begin_nested()
        try:
            with translated(item.action):
                value = item.body(conn)
        except Exception as exc:  # this write only: roll it back, keep the batch
            savepoint.rollback()
            return _Outcome(item.future, error=exc)
        savepoint.commit()
        return _Outcome(item.future, value)

    @staticmethod
    def _settle(outcomes: list[_Outcome]) -> None:
        by_loop: dict[asyncio.AbstractEventLoop, list[_Outcome]] = {}
        for outcome in outcomes:
            by_loop.setdefault(outcome.future.get_loop(), []).append(outcome)
        for loop, group in by_loop.items():
            with contextlib.suppress(RuntimeError):  # that loop is closed: nobody waits any more
                loop.call_soon_threadsafe(_resolve, group)


def _resolve(outcomes: list[_Outcome]) -> None:
    for outcome in outcomes:
        if outcome.future.done():  # the caller was cancelled; the write still happened (or not) all the same
            continue
        if outcome.error is not None:
            outcome.future.set_exception(outcome.error)
        else:
            outcome.future.set_result(outcome.value)
