"""``taskplane db admin-token``: recovery of platform-admin access from the server's machine."""

from __future__ import annotations

import asyncio
import stat
from pathlib import Path
from typing import Any

from typer.testing import CliRunner

from taskplane.cli.main import create_app
from tests.security.conftest import secured_platform


async def _first_start(data: Path) -> str:
    async with secured_platform(data) as first:
        return first.admin_token


async def _as(data: Path, token: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    async with secured_platform(data, expect_first_start=False) as again, again.client(token) as admin:
        who = (await admin.get("/platform/whoami")).json()
        records = (await admin.get("/platform/audit", params={"action": "tokens.create"})).json()["items"]
        return who, records


def test_minted_key_is_a_working_platform_admin_key_in_a_0600_file(tmp_path: Path) -> None:
    data = tmp_path / "data"
    original = asyncio.run(_first_start(data))
    # A CLI command with its own event loop: the test itself must not run one.
    result = CliRunner().invoke(create_app(), ["db", "admin-token", "--data-dir", str(data)])
    assert result.exit_code == 0, result.output
    token_file = data / "admin.token"
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    minted = token_file.read_text().strip()
    assert minted.startswith("tpk_") and minted != original
    who, records = asyncio.run(_as(data, minted))
    assert {"tenant": "*", "role": "platform-admin"} in who["bindings"]
    assert [r["principal"] for r in records] == ["system", "system"]
    assert "db admin-token" in records[-1]["detail"]["why"]
