"""The route table is the one place permissions are declared: complete, and the docs are generated from it."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi import APIRouter

from taskplane.api import permissions
from taskplane.api.app import ApiConfig, create_app
from taskplane.api.routes import tasks
from tests.security.conftest import Secured

DOCS = Path(__file__).resolve().parents[2] / "docs" / "permissions.md"


def test_docs_are_generated_from_the_table() -> None:
    assert DOCS.read_text() == permissions.markdown(), "run: python -m taskplane.api.permissions > docs/permissions.md"


def test_a_route_without_a_rule_stops_the_app(secured: Secured, monkeypatch: pytest.MonkeyPatch) -> None:
    extra = APIRouter()

    @extra.get("/platform/tasks/{task_id}/secret")
    async def secret(task_id: str) -> dict[str, str]:
        return {"task": task_id}

    monkeypatch.setattr(tasks.router, "routes", [*tasks.router.routes, *extra.routes])
    with pytest.raises(RuntimeError, match="routes without a permission"):
        create_app(secured.platform, ApiConfig(), manage_lifespan=False)


def test_a_rule_without_a_route_stops_the_app(secured: Secured, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(permissions.ROUTES, ("GET", "/platform/forgotten"), permissions.AUTHENTICATED)
    with pytest.raises(RuntimeError, match="permissions without a route"):
        create_app(secured.platform, ApiConfig(), manage_lifespan=False)


async def test_unknown_paths_need_authentication_before_they_are_404(secured: Secured) -> None:
    async with secured.client() as anon, secured.admin() as admin:
        assert (await anon.get("/platform/nothing-here")).status_code == 401
        assert (await admin.get("/platform/nothing-here")).status_code == 404
        assert (await anon.delete("/platform/tasks")).status_code == 401  # wrong method: still 401 first
        assert (await admin.delete("/platform/tasks")).status_code == 405
