"""The security of a real ``python -m taskplane server`` process: first-start key, loopback-only insecure mode, TLS."""

from __future__ import annotations

import contextlib
import ipaddress
import os
import ssl
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.support.server import ServerProcess
from tests.support.supervisor import kill_supervisor

TASK = {"command": ["true"]}


@contextlib.contextmanager
def running_server(data_dir: Path, **settings: str) -> Iterator[ServerProcess]:
    server = ServerProcess(data_dir, **settings)
    try:
        server.start()
        yield server
    finally:
        server.stop()
        kill_supervisor(data_dir / "supervisor")


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# ----------------------------------------------------------------------------------------------- first start


def test_first_start_prints_the_admin_key_once_and_keeps_it_private(tmp_path: Path) -> None:
    data = tmp_path / "data"
    token_file = data / "admin.token"
    with running_server(data) as server:
        assert server.token is not None
        token = server.token
        assert token.startswith("tpk_")
        log = server.log_path.read_text()
        assert log.count(token) == 1, "the key is printed exactly once"
        assert str(token_file) in log
        assert mode_of(token_file) == 0o600
        assert token_file.read_text().strip() == token
        assert mode_of(data / "auth.pepper") == 0o600
        with server.client() as c:
            r = c.get("/platform/whoami")
            assert r.status_code == 200, r.text
            assert r.json()["bindings"] == [{"tenant": "*", "role": "platform-admin"}]
        with httpx.Client(base_url=server.url, timeout=30) as anon:
            assert anon.get("/platform/tasks").status_code == 401
    first_log = server.log_path.read_text()
    before = token_file.stat()

    with running_server(data) as again:
        assert again.token == token
        log = again.log_path.read_text()
        added = log[len(first_log) :]
        assert "tpk_" not in added, "a restart prints no key"
        assert log.count(token) == 1
        after = token_file.stat()
        assert (after.st_ino, after.st_mtime_ns, mode_of(token_file)) == (before.st_ino, before.st_mtime_ns, 0o600)
        assert token_file.read_text().strip() == token
        with again.client() as c:
            assert c.get("/platform/whoami").status_code == 200
            keys = c.get("/platform/admin/tokens").json()["items"]
            assert len(keys) == 1


# ------------------------------------------------------------------------------------------ insecure-no-auth


def test_insecure_no_auth_refuses_a_non_loopback_address(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path / "data")  # for its environment (data dir, port) only
    try:
        done = subprocess.run(
            [sys.executable, "-m", "taskplane", "server", "--insecure-no-auth", "--host", "0.0.0.0"],
            env=server.env(),
            capture_output=True,
            text=True,
            timeout=60,
        )
    finally:
        kill_supervisor(tmp_path / "data" / "supervisor")
    assert done.returncode != 0
    assert "loopback" in done.stderr
    assert not (tmp_path / "data" / "admin.token").exists()


def test_insecure_no_auth_on_loopback(tmp_path: Path) -> None:
    with running_server(tmp_path / "data", insecure_no_auth="true") as server:
        assert server.token is None
        assert not (tmp_path / "data" / "admin.token").exists()
        with httpx.Client(base_url=server.url, timeout=30) as anon:
            r = anon.get("/platform/whoami")
            assert r.status_code == 200, r.text
            assert r.json()["subject"] == "anonymous"
            r = anon.post("/platform/tasks", json=TASK)
            assert r.status_code == 201, r.text
            assert r.json()["owner"] == "anonymous"
            records = anon.get("/platform/audit", params={"action": "tasks.create"}).json()["items"]
            assert [rec["principal"] for rec in records] == ["anonymous"]
        log = server.log_path.read_text()
        assert "AUTHENTICATION IS OFF" in log
        assert "tpk_" not in log


# ------------------------------------------------------------------------------------------------------- TLS


def self_signed(directory: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 (IP subject alternative name) and its key, as PEM files."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    os.chmod(key_path, 0o600)
    return cert_path, key_path


@pytest.fixture
def tls_server(tmp_path: Path) -> Iterator[tuple[ServerProcess, ssl.SSLContext]]:
    """A server on HTTPS; ``ServerProcess.start`` polls plain HTTP, so this one is started and polled here."""
    cert, key = self_signed(tmp_path)
    server = ServerProcess(tmp_path / "data", tls_cert=str(cert), tls_key=str(key))
    server.data_dir.mkdir(parents=True)
    context = ssl.create_default_context(cafile=str(cert))
    with server.log_path.open("ab") as log:
        server.proc = subprocess.Popen(
            [sys.executable, "-m", "taskplane", "server"],
            env=server.env(),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    https = f"https://127.0.0.1:{server.port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            if server.proc.poll() is not None:
                raise RuntimeError(f"server exited with {server.proc.returncode}:\n{server.log_path.read_text()}")
            try:
                if httpx.get(https + "/readyz", verify=context, timeout=1.0).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"server not ready:\n{server.log_path.read_text()[-4000:]}")
            time.sleep(0.05)
        server.token = (server.data_dir / "admin.token").read_text().strip()
        yield server, context
    finally:
        server.stop()
        kill_supervisor(server.data_dir / "supervisor")


def test_tls(tls_server: tuple[ServerProcess, ssl.SSLContext]) -> None:
    server, context = tls_server
    https = f"https://127.0.0.1:{server.port}"
    with httpx.Client(base_url=https, verify=context, timeout=30) as c:
        r = c.get("/healthz")
        assert r.status_code == 200
        assert r.headers["strict-transport-security"].startswith("max-age=")
        assert r.headers["x-content-type-options"] == "nosniff"
        r = c.get("/platform/whoami", headers=server.headers)
        assert r.status_code == 200, r.text
        assert "strict-transport-security" in r.headers
        r = c.get("/platform/whoami")
        assert r.status_code == 401
        assert "strict-transport-security" in r.headers
    # An unverified certificate is refused by a verifying client ...
    with pytest.raises(httpx.ConnectError), httpx.Client(timeout=10) as c:
        c.get(https + "/healthz")
    # ... and plain HTTP on the TLS port gets no answer.
    with pytest.raises(httpx.HTTPError), httpx.Client(timeout=10) as c:
        c.get(f"http://127.0.0.1:{server.port}/healthz")
