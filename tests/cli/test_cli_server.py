"""``server`` and ``db upgrade`` load settings (file < env < flags) and hand them to bootstrap."""

from __future__ import annotations

import sys
import types
from collections.abc import Callable
from pathlib import Path

import pytest
from typer.testing import Result

from taskplane.config import Settings

Run = Callable[..., Result]


@pytest.fixture
def served(monkeypatch: pytest.MonkeyPatch) -> list[Settings]:
    """Stand in for ``taskplane.bootstrap`` (the commands import it lazily) and record the settings given."""
    calls: list[Settings] = []
    fake = types.ModuleType("taskplane.bootstrap")
    fake.serve = calls.append  # type: ignore[attr-defined]
    fake.upgrade_database = calls.append  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "taskplane.bootstrap", fake)
    return calls


def test_server_flags_become_settings(run: Run, served: list[Settings], tmp_path: Path) -> None:
    result = run(
        "server",
        "--host", "0.0.0.0",
        "--port", "9000",
        "--data-dir", str(tmp_path),
        "--database-url", "postgresql+psycopg://u:pw@db/tp",
        "--node-cpu", "3500m",
        "--log-level", "debug",
    )  # fmt: skip

    assert result.exit_code == 0, result.output
    (settings,) = served
    assert (settings.host, settings.port, settings.data_dir) == ("0.0.0.0", 9000, tmp_path)
    assert settings.database_url == "postgresql+psycopg://u:pw@db/tp"
    assert settings.node_cpu == "3500m"
    assert settings.log_level == "debug"


def test_security_flags_become_settings(run: Run, served: list[Settings], tmp_path: Path) -> None:
    cert, key = tmp_path / "tls.crt", tmp_path / "tls.key"
    cert.write_text("cert")
    key.write_text("key")

    result = run("server", "--insecure-no-auth", "--tls-cert", str(cert), "--tls-key", str(key))

    assert result.exit_code == 0, result.output
    (settings,) = served
    assert (settings.insecure_no_auth, settings.tls_cert, settings.tls_key) == (True, cert, key)


def test_auth_stays_on_unless_asked(run: Run, served: list[Settings]) -> None:
    assert run("server").exit_code == 0
    assert run("server", env={"TASKPLANE_INSECURE_NO_AUTH": "true"}).exit_code == 0
    assert [s.insecure_no_auth for s in served] == [False, True]  # no flag: the environment decides


@pytest.mark.parametrize(
    ("args", "message"),
    [(["--tls-cert", "{cert}"], "tls_cert and tls_key go together"), (["--tls-key", "{missing}"], "--tls-key")],
)
def test_bad_tls_flags_are_usage_errors(
    run: Run, served: list[Settings], tmp_path: Path, args: list[str], message: str
) -> None:
    cert = tmp_path / "tls.crt"
    cert.write_text("cert")
    given = [a.format(cert=cert, missing=tmp_path / "missing.key") for a in args]

    result = run("server", *given)

    assert result.exit_code == 2
    assert message in result.stderr
    assert served == []


def test_flags_win_over_the_config_file(run: Run, served: list[Settings], tmp_path: Path) -> None:
    config = tmp_path / "taskplane.toml"
    config.write_text('port = 7000\nhost = "10.0.0.1"\nmax_batch = 10\n')

    result = run("server", "--config", str(config), "--port", "7001")

    assert result.exit_code == 0, result.output
    (settings,) = served
    assert (settings.host, settings.port, settings.max_batch) == ("10.0.0.1", 7001, 10)


@pytest.mark.parametrize(
    ("content", "message"),
    [("port = 99999\n", "port"), ("not toml ==\n", "cannot read the config file"), ("bogus = 1\n", "bogus")],
)
def test_a_bad_config_file_is_a_usage_error(
    run: Run, served: list[Settings], tmp_path: Path, content: str, message: str
) -> None:
    config = tmp_path / "bad.toml"
    config.write_text(content)

    result = run("server", "--config", str(config))

    assert result.exit_code == 2
    assert message in result.stderr
    assert len(result.stderr.splitlines()) == 1
    assert served == []


def test_a_missing_config_file_is_a_usage_error(run: Run, served: list[Settings], tmp_path: Path) -> None:
    result = run("server", "--config", str(tmp_path / "missing.toml"))
    assert result.exit_code == 2
    assert "--config" in result.stderr
    assert served == []


def test_db_upgrade(run: Run, served: list[Settings], tmp_path: Path) -> None:
    result = run("db", "upgrade", "--database-url", "postgresql+psycopg://u:secret@db/tp")

    assert result.exit_code == 0, result.output
    assert served[0].database_url == "postgresql+psycopg://u:secret@db/tp"
    assert result.stderr == "database is up to date: postgresql+psycopg://u:***@db/tp\n"


def test_db_alone_is_a_usage_error(run: Run) -> None:
    result = run("db")
    assert result.exit_code == 2
    assert result.stderr.startswith("taskplane db: error: Missing command.")
