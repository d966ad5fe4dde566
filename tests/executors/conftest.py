"""Fixtures for the local executor: a harness over tmp_path whose teardown leaves no process behind."""

from __future__ import annotations

import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from tests.executors.local_helpers import Harness


@pytest.fixture
async def harness(tmp_path: Path) -> AsyncIterator[Harness]:
    h = Harness(tmp_path / "data")
    try:
        yield h
    finally:
        await h.teardown()


@pytest.fixture
def short_tmp() -> Iterator[Path]:
    """A short directory under /tmp (socket paths must fit in 108 bytes)."""
    with tempfile.TemporaryDirectory(prefix="tp-") as d:
        yield Path(d)
