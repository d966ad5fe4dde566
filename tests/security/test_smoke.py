from __future__ import annotations

from tests.security.conftest import Secured


async def test_anonymous_is_401_and_admin_works(secured: Secured) -> None:
    async with secured.client() as anon, secured.admin() as admin:
        r = await anon.get("/platform/tasks")
        assert r.status_code == 401
        assert r.headers["www-authenticate"].startswith("Bearer")
        r = await admin.post("/platform/tasks", json={"command": ["true"], "simulated_duration": 60})
        assert r.status_code == 201, r.text
        assert r.json()["owner"].startswith("key:")
        assert (await anon.get("/healthz")).status_code == 200
