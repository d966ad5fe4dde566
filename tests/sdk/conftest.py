"""Fixtures of the SDK tests."""

from __future__ import annotations

import pytest

from tests.sdk.fakes import FakeApi


@pytest.fixture
def api() -> FakeApi:
    return FakeApi()


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory) -> None:
    for name in ("TASKPLANE_URL", "TASKPLANE_TOKEN", "TASKPLANE_CLIENT_CONFIG", "TASKPLANE_DATA_DIR"):
        monkeypatch.delenv(name, raising=False)
    # No test may find the real ~/.config/taskplane/client.toml or a real server's admin.token.
    home = tmp_path_factory.mktemp("home")
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home / "config"))
    monkeypatch.setenv("XDG_DATA_HOME", str(home / "data"))
