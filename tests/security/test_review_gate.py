"""Found in review, kept as specifications: 500s are audited and carry the headers, only GET health probes are public,
forwarded-for lines are one list, out-of-range and non-Unicode input is a 4xx."""

from __future__ import annotations

import ipaddress

import httpx
import pytest

from taskplane.api.security import GateConfig
from tests.security.conftest import Secured


async def _audit_count(secured: Secured) -> int:
    async with secured.admin() as admin:
        r = await admin.get("/platform/audit", params={"limit": 1000})
        assert r.status_code == 200, r.text
        return len(r.json()["items"])


async def _crashing_submit(secured: Secured, monkeypatch: pytest.MonkeyPatch) -> httpx.Response:
    """A submit that hits a bug below the gate (the task service raises an unexpected error: 500)."""

    async def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("a bug")

    monkeypatch.setattr(secured.platform.tasks, "submit", broken)
    transport = httpx.ASGITransport(app=secured.app, client=("127.0.0.1", 40000), raise_app_exceptions=False)
    async with httpx.AsyncClient(
        transport=transport, base_url="http://tp.test", headers={"Authorization": f"Bearer {secured.admin_token}"}
    ) as client:
        return await client.post("/platform/tasks", json={"command": ["true"]})


async def test_a_lone_surrogate_anywhere_in_a_body_is_a_422_naming_where(secured: Secured) -> None:
    async with secured.admin() as admin:
        r = await admin.post(
            "/platform/tasks",
            content=b'{"command": ["true"], "labels": {"a": "\\ud800"}}',
            headers={"content-type": "application/json"},
        )
        assert r.status_code == 422, r.text
        assert "labels.a" in r.json()["detail"]
        r = await admin.post(
            "/platform/admin/tokens",
            content=b'{"owner": "x\\udfff", "tenant": "*", "roles": ["viewer"]}',
            headers={"content-type": "application/json"},
        )
        assert r.status_code == 422, r.text


async def test_a_mutating_request_that_fails_with_500_has_its_one_audit_record(
    secured: Secured, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every mutating request writes one record, a 500 included (outcome ``error``)."""
    before = await _audit_count(secured)
    r = await _crashing_submit(secured, monkeypatch)
    assert r.status_code == 500
    assert r.json()["code"] == "internal" and "a bug" not in r.text
    assert await _audit_count(secured) == before + 1


async def test_a_500_answer_carries_the_request_id_and_security_headers(
    secured: Secured, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every response carries X-Request-Id and the security headers, a 500 included."""
    r = await _crashing_submit(secured, monkeypatch)
    assert r.status_code == 500
    assert "x-request-id" in r.headers
    assert r.headers.get("x-content-type-options") == "nosniff"


async def test_a_deadline_near_datetime_max_is_a_4xx_not_an_unhandled_error(secured: Secured) -> None:
    """An aware deadline whose UTC form overflows is refused, not a crash."""
    transport = httpx.ASGITransport(app=secured.app, client=("127.0.0.1", 40000), raise_app_exceptions=False)
    async with httpx.AsyncClient(
        transport=transport, base_url="http://tp.test", headers={"Authorization": f"Bearer {secured.admin_token}"}
    ) as client:
        r = await client.post(
            "/platform/tasks", json={"command": ["true"], "timeouts": {"deadline": "9999-12-31T23:59:59-23:00"}}
        )
    assert 400 <= r.status_code < 500, r.text


async def test_non_get_methods_on_health_paths_need_authentication(secured: Secured) -> None:
    """Only GET /healthz and GET /readyz are public; a POST there without credentials is a 401, audited."""
    before = await _audit_count(secured)
    async with secured.client() as anon:
        r = await anon.post("/healthz")
    assert r.status_code == 401, r.status_code
    assert await _audit_count(secured) == before + 1


async def test_forwarded_for_split_over_several_header_lines_is_read_as_one_list(make_secured) -> None:  # type: ignore[no-untyped-def]
    """RFC 9110: repeated header lines are one comma-joined list; the right-most untrusted hop is the client."""
    gate = GateConfig(trusted_proxies=(ipaddress.ip_network("10.0.0.0/8"),))
    async with make_secured(gate) as secured:
        transport = httpx.ASGITransport(app=secured.app, client=("10.0.0.2", 40000))
        async with httpx.AsyncClient(transport=transport, base_url="http://tp.test") as client:
            headers = [
                ("x-forwarded-for", "6.6.6.6"),
                ("x-forwarded-for", "203.0.113.7"),
                ("x-forwarded-for", "10.0.0.1"),
            ]
            r = await client.get("/platform/tasks", headers=headers)
        assert r.status_code == 401
        async with secured.admin() as admin:
            items = (await admin.get("/platform/audit", params={"outcome": "unauthenticated"})).json()["items"]
        assert [i["source"] for i in items] == ["203.0.113.7"]
