"""Where the clients find the server and the token: argument > environment > client config > local admin key."""

from __future__ import annotations

import stat
import tomllib
from pathlib import Path

import httpx
import pytest

from taskplane.errors import InvalidRequestError
from taskplane.sdk import AsyncClient, Client
from taskplane.sdk.credentials import (
    ClientConfig,
    admin_token_path,
    client_config_path,
    is_loopback_url,
    load_client_config,
    resolve,
    save_client_config,
)
from tests.sdk.fakes import FakeApi, task_json


@pytest.fixture
def config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A client config path in ``$TASKPLANE_CLIENT_CONFIG`` (not yet written)."""
    path = tmp_path / "client.toml"
    monkeypatch.setenv("TASKPLANE_CLIENT_CONFIG", str(path))
    return path


@pytest.fixture
def admin_token(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A server data dir in ``$TASKPLANE_DATA_DIR`` whose first start left ``admin.token``."""
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    path = data_dir / "admin.token"
    path.write_text("tp_admin\n")
    path.chmod(0o600)
    monkeypatch.setenv("TASKPLANE_DATA_DIR", str(data_dir))
    return path


def write(path: Path, text: str) -> None:
    path.write_text(text)
    path.chmod(0o600)


# -- the order ------------------------------------------------------------------------------------------------


def test_nothing_anywhere_means_the_default_url_and_no_token() -> None:
    found = resolve()
    assert (found.url, found.token, found.source) == ("http://127.0.0.1:8420", None, "none")


def test_the_admin_key_of_a_local_server_is_the_last_resort(admin_token: Path) -> None:
    found = resolve()
    assert (found.token, found.source) == ("tp_admin", str(admin_token))


def test_the_client_config_beats_the_admin_key(config: Path, admin_token: Path) -> None:
    write(config, 'token = "tp_saved"\n')
    found = resolve()
    assert (found.token, found.source) == ("tp_saved", str(config))


def test_the_environment_beats_the_client_config(
    config: Path, admin_token: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write(config, 'url = "http://127.0.0.1:8420"\ntoken = "tp_saved"\n')
    monkeypatch.setenv("TASKPLANE_TOKEN", "tp_env")
    found = resolve()
    assert (found.token, found.source) == ("tp_env", "$TASKPLANE_TOKEN")


def test_an_argument_beats_everything(config: Path, admin_token: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write(config, 'url = "http://saved:1"\ntoken = "tp_saved"\n')
    monkeypatch.setenv("TASKPLANE_TOKEN", "tp_env")
    monkeypatch.setenv("TASKPLANE_URL", "http://env:2")
    found = resolve("http://given:3/", "tp_given")
    assert (found.url, found.token, found.source) == ("http://given:3", "tp_given", "argument")


def test_the_config_url_is_used_when_no_other_is_given(config: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write(config, 'url = "https://tp.example.com/"\ntoken = "tp_saved"\n')
    assert resolve().url == "https://tp.example.com"
    monkeypatch.setenv("TASKPLANE_URL", "https://tp.example.com")
    assert resolve().token == "tp_saved"  # the same server, so its saved token goes with it


def test_the_saved_token_stays_with_its_server(config: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write(config, 'url = "https://tp.example.com"\ntoken = "tp_saved"\n')
    monkeypatch.setenv("TASKPLANE_URL", "https://other.example.com")
    found = resolve()
    assert (found.url, found.token) == ("https://other.example.com", None)


def test_the_admin_key_never_leaves_this_machine(admin_token: Path) -> None:
    assert resolve("https://tp.example.com").token is None
    assert resolve("http://localhost:8420").token == "tp_admin"
    assert resolve("http://[::1]:8420").token == "tp_admin"


def test_an_unreadable_admin_key_is_skipped(admin_token: Path) -> None:
    admin_token.unlink()
    admin_token.mkdir()  # reading fails (as it does for another user's 0600 file)
    assert resolve().token is None


def test_files_are_not_read_when_url_and_token_are_given(config: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write(config, "this is not TOML [\n")
    monkeypatch.setenv("TASKPLANE_TOKEN", "tp_env")
    assert resolve("http://given:1").token == "tp_env"
    with pytest.raises(InvalidRequestError) as bad:
        resolve()
    assert bad.value.code == "invalid_client_config"
    assert str(config) in bad.value.detail


def test_config_values_must_be_strings(config: Path) -> None:
    write(config, "token = 42\n")
    with pytest.raises(InvalidRequestError, match="token must be a string"):
        load_client_config()


@pytest.mark.parametrize(
    ("url", "loopback"),
    [
        ("http://127.0.0.1:8420", True),
        ("http://127.1.2.3", True),
        ("http://localhost", True),
        ("https://[::1]:1", True),
        ("http://10.0.0.1:8420", False),
        ("https://tp.example.com", False),
        ("http://localhost.example.com", False),
    ],
)
def test_is_loopback_url(url: str, loopback: bool) -> None:
    assert is_loopback_url(url) is loopback


# -- the paths ------------------------------------------------------------------------------------------------


def test_default_paths_follow_xdg(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "cfg"))
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "share"))
    assert client_config_path() == tmp_path / "cfg" / "taskplane" / "client.toml"
    assert admin_token_path() == tmp_path / "share" / "taskplane" / "admin.token"
    monkeypatch.delenv("XDG_CONFIG_HOME")
    assert client_config_path() == Path.home() / ".config" / "taskplane" / "client.toml"


def test_save_writes_a_private_file_that_loads_back(tmp_path: Path) -> None:
    path = tmp_path / "new" / "taskplane" / "client.toml"
    tricky = 'tp_"quoted"\\back\tslash'

    assert save_client_config(ClientConfig(url="https://tp.example.com", token=tricky), path) == path

    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert tomllib.loads(path.read_text()) == {"url": "https://tp.example.com", "token": tricky}
    assert load_client_config(path) == ClientConfig(url="https://tp.example.com", token=tricky)
    assert list(path.parent.iterdir()) == [path]  # no partial file left behind


def test_save_replaces_a_world_readable_file_with_a_private_one(tmp_path: Path) -> None:
    path = tmp_path / "client.toml"
    path.write_text('token = "old"\n')
    path.chmod(0o644)

    save_client_config(ClientConfig(token="new"), path)

    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_client_config(path) == ClientConfig(token="new")


# -- both clients use it --------------------------------------------------------------------------------------


def test_client_sends_the_saved_token_to_the_saved_url(api: FakeApi, config: Path) -> None:
    write(config, 'url = "http://saved.test:9"\ntoken = "tp_saved"\n')
    api.on("GET", "/platform/tasks/t-1", httpx.Response(200, json=task_json()))

    tp = Client(transport=api.transport)
    tp.get("t-1")

    assert tp.base_url == "http://saved.test:9"
    assert api.last.headers["authorization"] == "Bearer tp_saved"


async def test_async_client_sends_the_local_admin_key(api: FakeApi, admin_token: Path) -> None:
    api.on("GET", "/platform/tasks/t-1", httpx.Response(200, json=task_json()))

    async with AsyncClient(transport=api.transport) as tp:
        await tp.get("t-1")

    assert str(api.last.url) == "http://127.0.0.1:8420/platform/tasks/t-1"
    assert api.last.headers["authorization"] == "Bearer tp_admin"
