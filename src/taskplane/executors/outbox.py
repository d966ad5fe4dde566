"""``EventOutbox``: how an executor hands its events to the engine, batched, from the event loop."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from taskplane.services.ports import ExecutorEvent

log = logging.getLogger(__name__)


class EventOutbox:
    """Events batched and delivered from the loop, one call per loop pass.

    Never from inside the ``start``/``stop`` call that caused them: the consumer sees events arrive the way a
    real executor's do, after the call. A consumer that raises is logged, so it cannot stop the executor's
    watchers or clock. After ``close`` nothing more is delivered.
    """

    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._deliver: Callable[[list[ExecutorEvent]], None] | None = None
        self._events: list[ExecutorEvent] = []
        self._handle: asyncio.Handle | None = None
        self._closed = False

    def open(self, loop: asyncio.AbstractEventLoop, deliver: Callable[[list[ExecutorEvent]], None]) -> None:
        """Deliver to ``deliver`` from ``loop`` from now on (events emitted before wait for the next pass)."""
        self._loop = loop
        self._deliver = deliver

    def emit(self, event: ExecutorEvent) -> None:
        """Queue ``event`` for the next loop pass."""
        self._events.append(event)
        if self._handle is None and self._loop is not None and not self._closed:
            self._handle = self._loop.call_soon(self._flush)

    def close(self) -> None:
        """Deliver nothing more."""
        self._closed = True
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _flush(self) -> None:
        self._handle = None
        events, self._events = self._events, []
        if not events or self._closed or self._deliver is None:
            return
        try:
            self._deliver(events)
        except Exception:  # the consumer's bug must not stop the executor
            log.exception("on_events failed")
