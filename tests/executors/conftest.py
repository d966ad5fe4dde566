"""Fixtures for the executor tests: the local executor's harness over tmp_path (whose teardown leaves no process
behind), and the Kubernetes executor's harness over a fresh API double with one node."""

from __future__ import annotations

import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from tests.executors.local_helpers import Harness
from tests.support.kubeapi import KubeApiDouble
from tests.support.kubeapi.harness import KubeHarness


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


@pytest.fixture
async def kube(tmp_path: Path) -> AsyncIterator[KubeHarness]:
    """The Kubernetes executor's harness: an in-process API double with one 4-cpu node labelled pool=k8s."""
    double = KubeApiDouble()
    double.bind()
    double.cluster.add_node("node-a", cpu="4", memory="8Gi", labels={"pool": "k8s"})
    h = KubeHarness(double, tmp_path / "logs")
    try:
        yield h
    finally:
        await h.teardown()
