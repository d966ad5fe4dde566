"""Helpers for the podman executor tests: an executor that is opened, and acked and closed on the way out."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from taskplane.executors.podman import PodmanExecutor, PodmanExecutorConfig
from tests.executors.local_helpers import Recorder

TIMEOUT = 30.0


@contextlib.asynccontextmanager
async def running(config: PodmanExecutorConfig) -> AsyncIterator[tuple[PodmanExecutor, Recorder]]:
    """An open executor; on the way out every exit it saw is acked (removing the containers) and it is closed.

    What ``open`` recovered is recorded as if it had arrived as events: a test of a restart then need not care
    whether an attempt ended before or after the new executor opened.
    """
    executor = PodmanExecutor(config)
    events = Recorder()
    recovered = await executor.open(1, events)
    events([*recovered.running, *recovered.exited])
    try:
        yield executor, events
        await executor.ack(list(events.exited))
    finally:
        await executor.close()
