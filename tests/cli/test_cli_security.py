"""``login``, ``whoami``, ``tokens`` and ``roles``; how every command finds its token."""

from __future__ import annotations

import json
import os
import stat
import tomllib
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from typer.testing import Result

from tests.sdk.fakes import FakeApi, binding_json, problem, role_json, task_json, token_json, whoami_json

Run = Callable[..., Result]


def sent(api: FakeApi) -> object:
    return json.loads(api.last.content)


@pytest.fixture
def config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Where ``login`` saves: ``$TASKPLANE_CLIENT_CONFIG``, in a directory that does not exist yet."""
    path = tmp_path / "home" / "taskplane" / "client.toml"
    monkeypatch.setenv("TASKPLANE_CLIENT_CONFIG", str(path))
    return path


@pytest.fixture
def knows_me(api: FakeApi) -> FakeApi:
    api.on("GET", "/platform/whoami", httpx.Response(200, json=whoami_json()))
    return api


# -- login ------------------------------------------------------------------------------------------------------


def test_login_checks_the_token_then_saves_it_privately(run: Run, knows_me: FakeApi, config: Path) -> None:
    result = run("login", "--url", "https://tp.example.com/", "--token", "tp_secret")

    assert result.exit_code == 0, result.output
    assert knows_me.last.headers["authorization"] == "Bearer tp_secret"
    assert str(knows_me.last.url) == "https://tp.example.com/platform/whoami"
    assert tomllib.loads(config.read_text()) == {"url": "https://tp.example.com", "token": "tp_secret"}
    assert stat.S_IMODE(config.stat().st_mode) == 0o600
    assert stat.S_IMODE(config.parent.stat().st_mode) == 0o700
    assert "logged in to https://tp.example.com as key:000000000000" in result.stderr
    assert "tp_secret" not in result.output


def test_login_reads_the_token_from_stdin(run: Run, knows_me: FakeApi, config: Path) -> None:
    result = run("login", stdin="tp_piped\n")

    assert result.exit_code == 0, result.output
    assert knows_me.last.headers["authorization"] == "Bearer tp_piped"
    assert tomllib.loads(config.read_text()) == {"url": "http://127.0.0.1:8420", "token": "tp_piped"}
    assert "tp_piped" not in result.output  # never echoed


def test_login_takes_the_global_url(run: Run, knows_me: FakeApi, config: Path) -> None:
    result = run("--url", "http://elsewhere:1", "login", "--token", "t")
    assert result.exit_code == 0, result.output
    assert tomllib.loads(config.read_text())["url"] == "http://elsewhere:1"


def test_login_with_a_bad_token_saves_nothing(run: Run, api: FakeApi, config: Path) -> None:
    api.on("GET", "/platform/whoami", problem(401, "unauthenticated", "invalid credentials"))

    result = run("login", "--token", "tp_wrong")

    assert result.exit_code == 1
    assert "invalid credentials [unauthenticated]" in result.stderr
    assert not config.exists()


def test_login_without_a_token_is_a_usage_error(run: Run, api: FakeApi, config: Path) -> None:
    result = run("login", stdin="\n")
    assert result.exit_code == 2
    assert "no token given" in result.stderr
    assert api.requests == [] and not config.exists()


def test_login_replaces_a_broken_config(run: Run, knows_me: FakeApi, config: Path) -> None:
    config.parent.mkdir(parents=True)
    config.write_text("url = [broken\n")
    assert "[invalid_client_config]" in run("whoami").stderr

    result = run("login", "--token", "tp_new")

    assert result.exit_code == 0, result.output
    assert tomllib.loads(config.read_text()) == {"url": "http://127.0.0.1:8420", "token": "tp_new"}


def test_commands_use_the_saved_login(run: Run, knows_me: FakeApi, config: Path) -> None:
    knows_me.on("GET", "/platform/tasks/t-1", httpx.Response(200, json=task_json()))
    assert run("login", "--url", "http://saved:1", "--token", "tp_saved").exit_code == 0

    result = run("get", "t-1")

    assert result.exit_code == 0, result.output
    assert str(knows_me.last.url) == "http://saved:1/platform/tasks/t-1"
    assert knows_me.last.headers["authorization"] == "Bearer tp_saved"


def test_the_token_flag_beats_the_saved_login(run: Run, knows_me: FakeApi, config: Path) -> None:
    config.parent.mkdir(parents=True)
    config.write_text('token = "tp_saved"\n')
    assert run("--token", "tp_flag", "whoami").exit_code == 0
    assert knows_me.last.headers["authorization"] == "Bearer tp_flag"
    assert run("whoami", env={"TASKPLANE_TOKEN": "tp_env"}).exit_code == 0
    assert knows_me.last.headers["authorization"] == "Bearer tp_env"


def test_a_local_servers_admin_key_is_the_last_resort(
    run: Run, knows_me: FakeApi, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "admin.token").write_text("tp_admin\n")
    monkeypatch.setenv("TASKPLANE_DATA_DIR", str(tmp_path))

    result = run("whoami")

    assert result.exit_code == 0, result.output
    assert knows_me.last.headers["authorization"] == "Bearer tp_admin"
    assert f"Token from  {tmp_path / 'admin.token'}" in result.stdout


def test_a_401_says_how_to_log_in(run: Run, api: FakeApi) -> None:
    api.on("GET", "/platform/tasks/t-1", problem(401, "unauthenticated", "authentication required"))

    result = run("get", "t-1")

    assert result.exit_code == 1
    assert result.stderr == (
        "taskplane: error: authentication required [unauthenticated] "
        "(run 'taskplane login', or set --token or TASKPLANE_TOKEN)\n"
    )


def test_a_403_is_an_api_error(run: Run, api: FakeApi) -> None:
    api.on("GET", "/platform/admin/tokens", problem(403, "forbidden", "no role grants list on tokens"))
    result = run("tokens", "list")
    assert result.exit_code == 1
    assert "[forbidden]" in result.stderr


# -- whoami -----------------------------------------------------------------------------------------------------


def test_whoami(run: Run, knows_me: FakeApi) -> None:
    result = run("--token", "tok", "whoami")

    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["Subject", "key:000000000000"]
    assert "platform-admin in every tenant, developer in team-a" in result.stdout
    assert "Token from  argument" in result.stdout
    assert json.loads(run("whoami", "--json").stdout) == whoami_json()


# -- tokens -----------------------------------------------------------------------------------------------------


def test_tokens_create_prints_the_token_once(run: Run, api: FakeApi) -> None:
    created = token_json("0a1b2c3d4e5f", token="tp_0a1b2c3d4e5f_s3cret", expires_at="2099-01-01T00:00:00Z")
    api.on("POST", "/platform/admin/tokens", httpx.Response(201, json=created))

    result = run(
        "tokens", "create", "--owner", "ci", "--role", "developer", "--role", "viewer",
        "--tenant", "team-a", "--expires-in", "30d", "--description", "nightly",
    )  # fmt: skip

    assert result.exit_code == 0, result.output
    assert sent(api) == {
        "owner": "ci",
        "roles": ["developer", "viewer"],
        "tenant": "team-a",
        "expires_in": 30 * 86400,
        "description": "nightly",
    }
    assert result.stdout == "tp_0a1b2c3d4e5f_s3cret\n"  # alone on stdout: T=$(taskplane tokens create ...)
    assert "created API key 0a1b2c3d4e5f (subject key:0a1b2c3d4e5f) for ci" in result.stderr
    assert "shown only this once" in result.stderr


def test_tokens_create_json_is_the_whole_key(run: Run, api: FakeApi) -> None:
    created = token_json("0a1b2c3d4e5f", token="tp_s3cret")
    api.on("POST", "/platform/admin/tokens", httpx.Response(201, json=created))

    result = run("tokens", "create", "--owner", "ci", "--role", "developer", "--expires-in", "3600", "--json")

    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == created
    assert sent(api) == {"owner": "ci", "roles": ["developer"], "expires_in": 3600, "description": ""}


@pytest.mark.parametrize(
    ("args", "flag"),
    [
        (["--owner", "ci", "--role", "dev", "--expires-in", "soon"], "--expires-in"),
        (["--owner", "ci", "--role", "dev", "--expires-in", "10s"], "--expires-in"),
        (["--owner", "ci", "--role", "dev", "--tenant", "Not A Tenant"], "--tenant"),
        (["--owner", "", "--role", "dev"], "--owner"),
        (["--owner", "ci"], "--role"),
    ],
)
def test_tokens_create_bad_flags_are_usage_errors(run: Run, api: FakeApi, args: list[str], flag: str) -> None:
    result = run("tokens", "create", *args)
    assert result.exit_code == 2, result.output
    assert flag in result.stderr
    assert api.requests == []


def test_tokens_list_get_revoke(run: Run, api: FakeApi) -> None:
    revoked = token_json("b", state="revoked", revoked_at="2024-05-02T00:00:00Z", owner="old")
    api.on("GET", "/platform/admin/tokens", httpx.Response(200, json={"items": [token_json("a"), revoked]}))
    api.on("GET", "/platform/admin/tokens/a", httpx.Response(200, json=token_json("a", description="ci key")))
    api.on("DELETE", "/platform/admin/tokens/a", httpx.Response(200, json=token_json("a", state="revoked")))
    api.on("DELETE", "/platform/admin/tokens/zz", problem(404, "not_found", "API key zz not found"))

    listed = run("tokens", "list")
    assert listed.exit_code == 0, listed.output
    header, first, second = listed.stdout.splitlines()
    assert header.split()[:5] == ["ID", "OWNER", "TENANT", "ROLES", "STATE"]
    assert first.split()[:5] == ["a", "ci", "team-a", "developer", "active"]
    assert second.split()[:5] == ["b", "old", "team-a", "developer", "revoked"]

    shown = run("tokens", "get", "a")
    assert shown.exit_code == 0, shown.output
    assert "Subject      key:a" in shown.stdout and "ci key" in shown.stdout

    revoking = run("tokens", "revoke", "a")
    assert (revoking.exit_code, revoking.stdout) == (0, "a revoked\n")
    missing = run("tokens", "revoke", "zz")
    assert missing.exit_code == 1 and "[not_found]" in missing.stderr


def test_tokens_list_empty(run: Run, api: FakeApi) -> None:
    api.on("GET", "/platform/admin/tokens", httpx.Response(200, json={"items": []}))
    result = run("tokens", "list")
    assert (result.exit_code, result.stdout, result.stderr) == (0, "", "no API keys\n")
    assert json.loads(run("--json", "tokens", "list").stdout) == []


# -- roles ------------------------------------------------------------------------------------------------------


def test_roles_create_parses_rules(run: Run, api: FakeApi) -> None:
    api.on("POST", "/platform/admin/roles", httpx.Response(201, json=role_json("reader")))

    result = run(
        "roles", "create", "reader", "--rule", "get,list:tasks,logs", "--rule", "get:capacity", "--description", "ro"
    )

    assert result.exit_code == 0, result.output
    assert sent(api) == {
        "name": "reader",
        "rules": [
            {"verbs": ["get", "list"], "resources": ["tasks", "logs"]},
            {"verbs": ["get"], "resources": ["capacity"]},
        ],
        "description": "ro",
    }
    assert "get,list:logs,tasks" in result.stdout


@pytest.mark.parametrize(
    ("args", "flag"),
    [
        (["reader", "--rule", "get,list"], "--rule"),
        (["reader", "--rule", ":tasks"], "--rule"),
        (["reader", "--rule", "get:"], "--rule"),
        (["reader"], "--rule"),
        (["Not_A_Name", "--rule", "get:tasks"], "NAME"),
    ],
)
def test_roles_create_bad_flags_are_usage_errors(run: Run, api: FakeApi, args: list[str], flag: str) -> None:
    result = run("roles", "create", *args)
    assert result.exit_code == 2, result.output
    assert flag in result.stderr
    assert api.requests == []


def test_roles_list_get_delete(run: Run, api: FakeApi) -> None:
    admin = role_json("platform-admin", builtin=True, description="everything", rules=[{"verb": "*", "resource": "*"}])
    api.on("GET", "/platform/admin/roles", httpx.Response(200, json={"items": [admin, role_json("reader")]}))
    api.on("GET", "/platform/admin/roles/reader", httpx.Response(200, json=role_json("reader")))
    api.on("DELETE", "/platform/admin/roles/reader", httpx.Response(204))
    api.on("DELETE", "/platform/admin/roles/viewer", problem(409, "role_in_use", "role viewer is bound"))

    listed = run("roles", "list")
    assert listed.exit_code == 0, listed.output
    header, first, second = listed.stdout.splitlines()
    assert header.split() == ["NAME", "BUILT-IN", "RULES", "DESCRIPTION"]
    assert first.split() == ["platform-admin", "yes", "*:*", "everything"]
    assert second.split()[:3] == ["reader", "no", "get,list:logs,tasks"]

    shown = run("roles", "get", "reader")
    assert shown.exit_code == 0, shown.output
    assert "Rules        get,list:logs,tasks" in shown.stdout

    deleted = run("roles", "delete", "reader")
    assert (deleted.exit_code, deleted.stderr) == (0, "deleted role reader\n")
    refused = run("roles", "delete", "viewer")
    assert refused.exit_code == 1 and "[role_in_use]" in refused.stderr


def test_roles_bind_unbind_and_bindings(run: Run, api: FakeApi) -> None:
    api.on("POST", "/platform/admin/rolebindings", httpx.Response(201, json=binding_json("rb-1")))
    api.on("GET", "/platform/admin/rolebindings", httpx.Response(200, json={"items": [binding_json("rb-1")]}))
    api.on("DELETE", "/platform/admin/rolebindings/rb-1", httpx.Response(204))

    bound = run("roles", "bind", "--subject", "oidc:alice", "--tenant", "team-a", "--role", "reader")
    assert bound.exit_code == 0, bound.output
    assert sent(api) == {"subject": "oidc:alice", "tenant": "team-a", "role": "reader"}
    assert bound.stdout == "rb-1 oidc:alice holds reader in tenant team-a\n"

    listed = run("roles", "bindings", "--subject", "oidc:alice")
    assert listed.exit_code == 0, listed.output
    assert api.last.url.params["subject"] == "oidc:alice"
    assert listed.stdout.splitlines()[1].split()[:4] == ["rb-1", "oidc:alice", "team-a", "reader"]
    assert json.loads(run("roles", "bindings", "--json").stdout) == [binding_json("rb-1")]

    unbound = run("roles", "unbind", "rb-1")
    assert (unbound.exit_code, unbound.stderr) == (0, "removed binding rb-1\n")


def test_roles_bind_checks_the_subject(run: Run, api: FakeApi) -> None:
    result = run("roles", "bind", "--subject", "alice", "--tenant", "team-a", "--role", "reader")
    assert result.exit_code == 2
    assert "--subject" in result.stderr
    assert api.requests == []


def test_login_file_is_not_world_readable_even_with_a_loose_umask(run: Run, knows_me: FakeApi, config: Path) -> None:
    old = os.umask(0)
    try:
        assert run("login", "--token", "t").exit_code == 0
    finally:
        os.umask(old)
    assert stat.S_IMODE(config.stat().st_mode) == 0o600
    assert stat.S_IMODE(config.parent.stat().st_mode) == 0o700
