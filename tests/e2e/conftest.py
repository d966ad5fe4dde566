from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.server import ServerProcess
from tests.support.services import postgres_schema
from tests.support.supervisor import kill_supervisor


@contextlib.contextmanager
def running_server(data_dir: Path, database_url: str | None = None, **settings: str) -> Iterator[ServerProcess]:
    server = ServerProcess(data_dir, database_url, **settings)
    try:
        server.start()
        yield server
    finally:
        server.stop()
        kill_supervisor(data_dir / "supervisor")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """One embedded-default server (SQLite) shared by a module's tests; 4 cores and 8Gi of node capacity."""
    with running_server(
        tmp_path_factory.mktemp("server"), node_cpu="4", node_memory="8Gi", kill_grace="2", log_limit="1Mi"
    ) as s:
        yield s


POOLS = [
    {"name": "default", "executor": "local"},
    {
        "name": "sim",
        "executor": "simulated",
        "nodes": [
            {
                "count": 2,
                "name_prefix": "gpu",
                "cpu": 4,
                "memory": "8Gi",
                "gpu": 1,
                "extended": {"example.com/fpga": 1},
                "labels": {"zone": "a"},
            },
            {"count": 1, "name_prefix": "big", "cpu": 8, "memory": "16Gi", "labels": {"zone": "b"}},
        ],
    },
]
"""Two pools: ``default`` (this machine, local executor) and ``sim`` (three simulated nodes)."""


@pytest.fixture(scope="module")
def pooled_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A server per module with the ``POOLS`` above."""
    with running_server(
        tmp_path_factory.mktemp("pooled"), node_cpu="4", node_memory="8Gi", kill_grace="2", pools=json.dumps(POOLS)
    ) as s:
        yield s


@pytest.fixture(params=["sqlite", "postgres"])
def backend_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str | None]:
    """``None`` (the embedded SQLite default) or a fresh PostgreSQL schema."""
    if request.param == "sqlite":
        yield None
    else:
        with postgres_schema("tp_e2e") as url:
            yield url
