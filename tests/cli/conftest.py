"""Fixtures of the CLI tests: the CLI runs against the SDK tests' scripted API (``tests.sdk.fakes``)."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from typer.testing import CliRunner, Result

from taskplane.cli.main import create_app
from taskplane.sdk import AsyncClient, Client
from tests.sdk.fakes import FakeApi


@pytest.fixture
def api() -> FakeApi:
    return FakeApi()


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory) -> None:
    names = ("URL", "TOKEN", "CONFIG", "CLIENT_CONFIG", "DATA_DIR", "PORT", "INSECURE_NO_AUTH", "TLS_CERT", "TLS_KEY")
    for name in names:
        monkeypatch.delenv(f"TASKPLANE_{name}", raising=False)
    # No test may find the real ~/.config/taskplane/client.toml or a real server's admin.token.
    home = tmp_path_factory.mktemp("home")
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home / "config"))
    monkeypatch.setenv("XDG_DATA_HOME", str(home / "data"))


@pytest.fixture
def run(api: FakeApi) -> Callable[..., Result]:
    """Invoke ``taskplane ARGS...`` with clients that talk to ``api``; returns click's Result."""

    def make_client(base_url: str | None = None, *, token: str | None = None) -> Client:
        return Client(base_url or "http://tp.test", token=token, transport=api.transport)

    def make_async_client(base_url: str | None = None, *, token: str | None = None) -> AsyncClient:
        return AsyncClient(base_url or "http://tp.test", token=token, transport=api.transport)

    app = create_app(make_client, make_async_client)

    def invoke(*args: str, env: dict[str, str] | None = None, stdin: str | None = None) -> Result:
        return CliRunner().invoke(app, list(args), env={"COLUMNS": "200", **(env or {})}, input=stdin)

    return invoke
