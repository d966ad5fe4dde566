"""A real taskplane server in a child process, for end-to-end tests (HTTP from a plain httpx client)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ServerProcess:
    """``python -m taskplane server`` with its own data dir and database; restartable, killable with -9."""

    def __init__(self, data_dir: Path, database_url: str | None = None, **settings: str) -> None:
        self.data_dir = data_dir
        self.database_url = database_url
        self.settings = settings
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = data_dir / "server.log"
        self.token: str | None = None  # the platform-admin key the first start left in the data dir

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("TASKPLANE_")}
        env.update(
            TASKPLANE_DATA_DIR=str(self.data_dir),
            TASKPLANE_PORT=str(self.port),
            TASKPLANE_HOST="127.0.0.1",
            TASKPLANE_SUPERVISOR_IDLE_EXIT="60",
        )
        if self.database_url:
            env["TASKPLANE_DATABASE_URL"] = self.database_url
        for key, value in self.settings.items():
            env[f"TASKPLANE_{key.upper()}"] = value
        return env

    def start(self, timeout: float = 30.0) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "taskplane", "server"],
            env=self.env(),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.log_path.read_text()[-4000:]}")
            try:
                if httpx.get(self.url + "/readyz", timeout=1.0).status_code == 200:
                    token_file = self.data_dir / "admin.token"
                    self.token = token_file.read_text().strip() if token_file.exists() else None
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"server not ready after {timeout}s:\n{self.log_path.read_text()[-4000:]}")

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)
        self.proc = None

    def stop(self) -> None:
        if self.proc is None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
        self.proc = None

    @property
    def headers(self) -> dict[str, str]:
        """The platform-admin ``Authorization`` header (empty when the server runs without auth)."""
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}

    def client(self, timeout: float = 30.0, token: str | None = None) -> httpx.Client:
        """A client authenticated with ``token`` (default: the platform-admin key)."""
        headers = {"Authorization": f"Bearer {token}"} if token else self.headers
        return httpx.Client(base_url=self.url, timeout=timeout, headers=headers)
