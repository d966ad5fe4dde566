from __future__ import annotations

import contextlib
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


@pytest.fixture(params=["sqlite", "postgres"])
def backend_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str | None]:
    """``None`` (the embedded SQLite default) or a fresh PostgreSQL schema."""
    if request.param == "sqlite":
        yield None
    else:
        with postgres_schema("tp_e2e") as url:
            yield url
