"""An in-process secured platform (SQLite, one simulated pool) driven over ASGI by a plain httpx client.

No test double: the real store, engine, services, security gate and app; the simulated executor stands in
for processes only so that tasks stay pending or running as long as a test needs.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from taskplane.api.app import ApiConfig, create_app
from taskplane.api.security import GateConfig
from taskplane.bootstrap import build_platform, first_start
from taskplane.config import Settings
from taskplane.services.platform import Platform

SIM_POOL = {
    "name": "default",
    "executor": "simulated",
    "nodes": [{"count": 2, "name_prefix": "sim", "cpu": 8, "memory": "16Gi"}],
}


@dataclass
class Secured:
    """A running secured platform and its app."""

    platform: Platform
    app: Any
    admin_token: str
    settings: Settings

    def client(self, token: str | None = None, *, address: str = "127.0.0.1", **headers: str) -> httpx.AsyncClient:
        """An httpx client of the app; ``token`` None sends no Authorization header."""
        sent = dict(headers)
        if token is not None:
            sent["Authorization"] = f"Bearer {token}"
        transport = httpx.ASGITransport(app=self.app, client=(address, 40000))
        return httpx.AsyncClient(transport=transport, base_url="http://tp.test", headers=sent, timeout=30)

    def admin(self) -> httpx.AsyncClient:
        """A platform-admin client."""
        return self.client(self.admin_token)


@asynccontextmanager
async def secured_platform(
    data_dir: Path, gate: GateConfig | None = None, *, expect_first_start: bool = True, **settings: Any
) -> AsyncIterator[Secured]:
    """Build, start and (afterwards) stop a secured platform in ``data_dir``."""
    values: dict[str, Any] = {"data_dir": data_dir, "pools": json.dumps([SIM_POOL]), **settings}
    s = Settings(**values)
    platform = build_platform(s)
    token = await first_start(platform, s)
    if expect_first_start:
        assert token is not None
    else:
        assert token is None
        token = (data_dir / "admin.token").read_text().strip()
    app = create_app(platform, ApiConfig(gate=gate or GateConfig()), manage_lifespan=False)
    await platform.start()
    try:
        yield Secured(platform, app, token, s)
    finally:
        await platform.stop()


@pytest.fixture
def make_secured(tmp_path: Path) -> Callable[..., Any]:
    """``async with make_secured(**settings) as secured:`` (a fresh data dir each time)."""
    counter = iter(range(1000))

    def make(gate: GateConfig | None = None, **settings: Any) -> Any:
        return secured_platform(tmp_path / f"tp{next(counter)}", gate, **settings)

    return make


@pytest.fixture
async def secured(make_secured: Callable[..., Any]) -> AsyncIterator[Secured]:
    """A secured platform with default settings."""
    async with make_secured() as s:
        yield s
