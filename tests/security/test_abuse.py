"""Abuse limits and request hygiene: brute force, spoofed addresses, tenant floods, oversized requests,
security headers on every answer, and mass assignment / privilege escalation through the API.

Refill rates are set so low (a token per hours) that no token comes back while a test runs: the counts below
depend on the order of requests only, never on how fast they are sent.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import AsyncIterator, Callable
from ipaddress import ip_network
from typing import Any

import httpx
import pytest

from taskplane.api.security import GateConfig
from tests.security.conftest import Secured

TASK = {"command": ["true"], "simulated_duration": 60}
ATTACKER = "203.0.113.7"
BYSTANDER = "198.51.100.20"
SLOW = {"auth_failure_window": 86_400.0}  # refill 20 tokens a day: nothing comes back during a test


def bad_key() -> str:
    return f"tpk_{secrets.token_hex(8)}_{secrets.token_urlsafe(32)}"


async def create_key(secured: Secured, **body: Any) -> dict[str, Any]:
    async with secured.admin() as admin:
        r = await admin.post("/platform/admin/tokens", json={"owner": "svc", **body})
        assert r.status_code == 201, r.text
        created: dict[str, Any] = r.json()
        return created


async def create_tenants(secured: Secured, *names: str) -> None:
    async with secured.admin() as admin:
        for name in names:
            r = await admin.post("/platform/admin/tenants", json={"name": name})
            assert r.status_code == 201, r.text


async def export(secured: Secured) -> list[dict[str, Any]]:
    async with secured.admin() as admin:
        r = await admin.get("/platform/audit/export")
        assert r.status_code == 200, r.text
        return [json.loads(line) for line in r.text.splitlines() if line.strip()]


async def task_count(secured: Secured) -> int:
    async with secured.admin() as admin:
        r = await admin.get("/platform/tasks", params={"limit": 1000})
        assert r.status_code == 200, r.text
        return len(r.json()["items"])


def assert_rate_limited(r: httpx.Response) -> None:
    assert r.status_code == 429, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    assert r.json()["code"] == "rate_limited"
    assert int(r.headers["retry-after"]) >= 1


# -------------------------------------------------------------------------------------------- brute force


async def test_brute_force_from_one_address(make_secured: Callable[..., Any]) -> None:
    async with make_secured(auth_failure_limit=20, **SLOW) as s:
        viewer = await create_key(s, tenant="*", roles=["viewer"])
        statuses: dict[int, int] = {}
        async with s.client(address=ATTACKER) as attacker, s.client(viewer["token"], address=BYSTANDER) as other:
            for i in range(2000):
                r = await attacker.get("/platform/tasks", headers={"Authorization": f"Bearer {bad_key()}"})
                statuses[r.status_code] = statuses.get(r.status_code, 0) + 1
                if r.status_code == 429:
                    assert int(r.headers["retry-after"]) >= 1
                if i == 1000:
                    # Meanwhile, a valid key from another address is served.
                    assert (await other.get("/platform/tasks")).status_code == 200
            assert statuses == {401: 20, 429: 1980}
            # By design, a throttled address is refused before any credential is looked at: even a valid key
            # from it waits out the spell (docs/security.md, "Abuse limits").
            r = await attacker.get("/platform/tasks", headers={"Authorization": f"Bearer {viewer['token']}"})
            assert_rate_limited(r)
            assert (await other.get("/platform/tasks")).status_code == 200
        from_attacker = [rec for rec in await export(s) if rec["source"] == ATTACKER]
        unauthenticated = [rec for rec in from_attacker if rec["outcome"] == "unauthenticated"]
        throttled = [rec for rec in from_attacker if rec["outcome"] == "throttled"]
        assert len(unauthenticated) == 20
        assert all(rec["action"] == "auth.authenticate" for rec in unauthenticated)
        assert 1 <= len(throttled) <= 3, throttled  # once per throttling spell, not 1,981 times
        assert all(rec["action"] == "auth.throttle" for rec in throttled)
        assert len(from_attacker) == len(unauthenticated) + len(throttled)


async def test_bad_secrets_for_one_key_id_from_many_addresses(make_secured: Callable[..., Any]) -> None:
    async with make_secured(auth_failure_limit=20, **SLOW) as s:
        target = await create_key(s, tenant="*", roles=["viewer"])
        statuses = []
        for i in range(50):
            forged = f"tpk_{target['id']}_{secrets.token_urlsafe(32)}"
            async with s.client(forged, address=f"192.0.2.{i + 1}") as c:
                r = await c.get("/platform/whoami")
                statuses.append(r.status_code)
                if r.status_code == 429:
                    assert_rate_limited(r)
        assert statuses == [401] * 20 + [429] * 30
        # Another key id from a fresh address is unaffected.
        other = await create_key(s, tenant="*", roles=["viewer"])
        async with s.client(other["token"], address="192.0.2.200") as c:
            assert (await c.get("/platform/whoami")).status_code == 200
        # Guessing cannot go on by switching addresses: wrong secrets for the key id stay throttled ...
        forged = f"tpk_{target['id']}_{secrets.token_urlsafe(32)}"
        async with s.client(forged, address="192.0.2.202") as c:
            assert_rate_limited(await c.get("/platform/whoami"))
        # ... but knowing the (public) key id does not lock its owner out: the genuine secret still works.
        async with s.client(target["token"], address="192.0.2.201") as c:
            assert (await c.get("/platform/whoami")).status_code == 200


# ------------------------------------------------------------------------------------------ X-Forwarded-For


async def test_spoofed_forwarded_for_is_ignored_without_trusted_proxies(make_secured: Callable[..., Any]) -> None:
    async with make_secured(auth_failure_limit=5, **SLOW) as s:
        viewer = await create_key(s, tenant="*", roles=["viewer"])
        async with s.client(address=ATTACKER) as c:
            statuses = []
            for i in range(10):
                r = await c.get(
                    "/platform/whoami",
                    headers={"Authorization": f"Bearer {bad_key()}", "X-Forwarded-For": f"192.0.2.{i + 1}"},
                )
                statuses.append(r.status_code)
            assert statuses == [401] * 5 + [429] * 5
            r = await c.get(
                "/platform/whoami",
                headers={"Authorization": f"Bearer {viewer['token']}", "X-Forwarded-For": "192.0.2.99"},
            )
            assert_rate_limited(r)
        records = [rec for rec in await export(s) if rec["outcome"] == "unauthenticated"]
        assert {rec["source"] for rec in records} == {ATTACKER}


async def test_forwarded_for_from_a_trusted_proxy_names_the_client(make_secured: Callable[..., Any]) -> None:
    gate = GateConfig(trusted_proxies=(ip_network("127.0.0.0/8"),))
    async with make_secured(gate, auth_failure_limit=5, **SLOW) as s:
        viewer = await create_key(s, tenant="*", roles=["viewer"])

        async def call(forwarded: str, token: str) -> httpx.Response:
            async with s.client(token, address="127.0.0.1", **{"X-Forwarded-For": forwarded}) as c:
                return await c.get("/platform/whoami")

        statuses = [(await call(ATTACKER, bad_key())).status_code for _ in range(8)]
        assert statuses == [401] * 5 + [429] * 3
        assert_rate_limited(await call(ATTACKER, viewer["token"]))
        # Another client behind the same proxy is not throttled ...
        assert (await call(BYSTANDER, viewer["token"])).status_code == 200
        assert (await call(BYSTANDER, bad_key())).status_code == 401
        # ... and the attacker cannot escape by prepending a made-up hop: the right-most untrusted one counts.
        assert_rate_limited(await call(f"192.0.2.77, {ATTACKER}", viewer["token"]))
        # Hops added by trusted proxies are skipped.
        assert_rate_limited(await call(f"{ATTACKER}, 127.0.0.5", viewer["token"]))
        records = [rec for rec in await export(s) if rec["outcome"] == "unauthenticated"]
        assert sorted({rec["source"] for rec in records}) == sorted({ATTACKER, BYSTANDER})
        # The peer itself is an untrusted address when it is not a proxy: its XFF means nothing.
        async with s.client(viewer["token"], address=ATTACKER, **{"X-Forwarded-For": BYSTANDER}) as c:
            assert_rate_limited(await c.get("/platform/whoami"))


# ------------------------------------------------------------------------------------------ tenant floods


async def test_tenant_rate_limit(make_secured: Callable[..., Any]) -> None:
    # Burst 5, and a refill so slow (one request per 1,000 s) that no token comes back during the test.
    async with make_secured(GateConfig(tenant_rate=0.001, tenant_burst=5)) as s:
        await create_tenants(s, "ta", "tb")
        in_ta = await create_key(s, tenant="ta", roles=["viewer"])
        also_in_ta = await create_key(s, tenant="ta", roles=["submitter"])
        in_tb = await create_key(s, tenant="tb", roles=["viewer"])
        wide = await create_key(s, tenant="*", roles=["viewer"])
        async with s.client(in_ta["token"]) as c:
            statuses = [(await c.get("/platform/tasks")).status_code for _ in range(7)]
            assert statuses == [200] * 5 + [429] * 2
            assert_rate_limited(await c.get("/platform/tasks"))
        async with s.client(also_in_ta["token"]) as c:  # keys of one tenant share its bucket
            assert_rate_limited(await c.get("/platform/tasks"))
        async with s.client(in_tb["token"]) as c:
            assert (await c.get("/platform/tasks")).status_code == 200
        async with s.client(wide["token"]) as c:  # platform-wide keys are exempt
            assert [(await c.get("/platform/tasks")).status_code for _ in range(50)] == [200] * 50
        throttles = [rec for rec in await export(s) if rec["action"] == "auth.throttle"]
        assert len(throttles) == 1, throttles  # one record per spell of the tenant
        assert throttles[0]["detail"]["key"] == "tenant:ta"


# ---------------------------------------------------------------------------------------- oversized input


async def test_oversized_headers_get_431(make_secured: Callable[..., Any]) -> None:
    async with make_secured(GateConfig(max_header_bytes=2048)) as s, s.admin() as admin:
        r = await admin.get("/platform/tasks", headers={"X-Padding": "a" * 4096})
        assert r.status_code == 431
        assert r.headers["content-type"].startswith("application/problem+json")
        body = r.json()
        assert body["status"] == 431
        assert body["code"] == "headers_too_large"
        assert_security_headers(r)
        async with s.client(address=ATTACKER, **{"X-Padding": "a" * 4096}) as anon:
            assert (await anon.get("/platform/tasks")).status_code == 431
        assert (await admin.get("/platform/tasks", headers={"X-Padding": "a" * 512})).status_code == 200


async def test_oversized_body_gets_413_for_an_authenticated_caller(secured: Secured) -> None:
    async with secured.admin() as admin:
        big = {**TASK, "env": {"PAD": "a" * (2 << 20)}}
        r = await admin.post("/platform/tasks", json=big)
        assert r.status_code == 413, r.text
        assert r.headers["content-type"].startswith("application/problem+json")
        assert_security_headers(r)
    assert await task_count(secured) == 0


# ----------------------------------------------------------------------------------------------- headers


def assert_security_headers(r: httpx.Response) -> None:
    h = r.headers
    assert h.get("x-request-id"), r
    assert h.get("x-content-type-options") == "nosniff"
    assert h.get("x-frame-options") == "DENY"
    assert h.get("referrer-policy") == "no-referrer"
    assert h.get("content-security-policy") == "default-src 'none'; frame-ancestors 'none'"
    assert h.get("cross-origin-resource-policy") == "same-origin"
    assert "strict-transport-security" not in h  # plain HTTP here


async def test_security_headers_on_every_answer(make_secured: Callable[..., Any]) -> None:
    async with make_secured(auth_failure_limit=1, **SLOW) as s:
        seen: dict[int, httpx.Response] = {}
        async with s.admin() as admin:
            seen[200] = await admin.get("/platform/tasks")
            seen[404] = await admin.get("/platform/tasks/tsk-missing")
            r404 = await admin.get("/no/such/route")
            assert r404.status_code == 404
            assert_security_headers(r404)
            health = await admin.get("/healthz")
            assert health.status_code == 200
            assert_security_headers(health)
        async with s.client(address=ATTACKER) as anon:
            seen[401] = await anon.get("/platform/tasks", headers={"Authorization": f"Bearer {bad_key()}"})
            seen[429] = await anon.get("/platform/tasks", headers={"Authorization": f"Bearer {bad_key()}"})
        assert {status: r.status_code for status, r in seen.items()} == {200: 200, 404: 404, 401: 401, 429: 429}
        ids = set()
        for r in seen.values():
            assert_security_headers(r)
            ids.add(r.headers["x-request-id"])
        assert len(ids) == len(seen)


# ----------------------------------------------------------------------------------------- mass assignment


@pytest.fixture
async def tenant_admin(make_secured: Callable[..., Any]) -> AsyncIterator[tuple[Secured, str]]:
    """A platform with tenants ta, tb and a tenant-admin key of ta."""
    async with make_secured() as s:
        await create_tenants(s, "ta", "tb")
        key = await create_key(s, tenant="ta", roles=["tenant-admin"])
        yield s, key["token"]


async def test_a_task_naming_its_owner_is_refused(secured: Secured) -> None:
    async with secured.admin() as admin:
        r = await admin.post("/platform/tasks", json={**TASK, "owner": "key:someone-else"})
        assert r.status_code == 422, r.text
        assert r.headers["content-type"].startswith("application/problem+json")
    assert await task_count(secured) == 0


async def test_a_submitter_cannot_submit_in_another_tenant(tenant_admin: tuple[Secured, str]) -> None:
    s, _ = tenant_admin
    submitter = await create_key(s, tenant="ta", roles=["submitter"])
    async with s.client(submitter["token"]) as c:
        r = await c.post("/platform/tasks", json={**TASK, "tenant": "tb"})
        assert r.status_code == 403, r.text
        r = await c.post("/platform/tasks", json={**TASK, "tenant": "no-such-tenant"})
        assert r.status_code == 403, r.text  # whether or not the tenant exists
        r = await c.post("/platform/tasks/batch", json={"tasks": [{**TASK, "tenant": "ta"}, {**TASK, "tenant": "tb"}]})
        assert r.status_code == 403, r.text
    assert await task_count(s) == 0


@pytest.mark.parametrize("tenant", ["*", "tb"])
async def test_a_tenant_admin_cannot_mint_keys_outside_its_tenant(
    tenant_admin: tuple[Secured, str], tenant: str
) -> None:
    s, token = tenant_admin
    async with s.client(token) as c:
        r = await c.post("/platform/admin/tokens", json={"owner": "x", "tenant": tenant, "roles": ["viewer"]})
        assert r.status_code == 403, r.text
        r = await c.post("/platform/admin/rolebindings", json={"subject": "oidc:x", "tenant": tenant, "role": "viewer"})
        assert r.status_code == 403, r.text
    async with s.admin() as admin:
        items = (await admin.get("/platform/admin/tokens")).json()["items"]
        assert {k["tenant"] for k in items} == {"*", "ta"}  # the bootstrap key and the tenant-admin key only
        assert (await admin.get("/platform/admin/rolebindings")).json()["items"] == []


async def test_a_tenant_admin_cannot_escalate(tenant_admin: tuple[Secured, str]) -> None:
    s, token = tenant_admin
    async with s.admin() as admin:
        r = await admin.post(
            "/platform/admin/roles",
            json={"name": "tenant-editor", "rules": [{"verbs": ["get", "update"], "resources": ["tenants"]}]},
        )
        assert r.status_code == 201, r.text
    async with s.client(token) as c:
        for role in ("platform-admin", "tenant-editor"):
            r = await c.post("/platform/admin/tokens", json={"owner": "x", "tenant": "ta", "roles": [role]})
            assert r.status_code == 403, r.text
            assert r.json()["code"] == "escalation"
            r = await c.post("/platform/admin/rolebindings", json={"subject": "oidc:x", "tenant": "ta", "role": role})
            assert r.status_code == 403, r.text
            assert r.json()["code"] == "escalation"
        r = await c.post(
            "/platform/admin/tokens", json={"owner": "x", "tenant": "ta", "roles": ["viewer", "platform-admin"]}
        )
        assert r.status_code == 403
        assert r.json()["code"] == "escalation"
    denied = [rec for rec in await export(s) if rec["outcome"] == "denied"]
    assert len(denied) == 5
    assert all(rec["status"] == 403 for rec in denied)
    assert all("escalation" in rec["detail"].get("reason", "") for rec in denied), denied


async def test_a_tenant_admin_can_mint_a_submitter_key_in_its_tenant(tenant_admin: tuple[Secured, str]) -> None:
    s, token = tenant_admin
    async with s.client(token) as c:
        r = await c.post("/platform/admin/tokens", json={"owner": "ci", "roles": ["submitter"]})
        assert r.status_code == 201, r.text
        minted = r.json()
        assert minted["tenant"] == "ta"  # its only tenant, when none is named
        assert minted["created_by"].startswith("key:")
    async with s.client(minted["token"]) as c:
        r = await c.post("/platform/tasks", json=TASK)
        assert r.status_code == 201, r.text
        assert r.json()["tenant"] == "ta"
        assert r.json()["owner"] == f"key:{minted['id']}"
        assert (await c.post("/platform/tasks", json={**TASK, "tenant": "tb"})).status_code == 403
        assert (await c.post("/platform/admin/tokens", json={"owner": "y", "roles": ["viewer"]})).status_code == 403


async def test_a_tenant_admin_cannot_touch_other_tenants_keys_or_audit(tenant_admin: tuple[Secured, str]) -> None:
    s, token = tenant_admin
    in_tb = await create_key(s, tenant="tb", roles=["viewer"])
    admin_id = s.admin_token.split("_")[1]
    async with s.client(token) as c:
        for key_id in (in_tb["id"], admin_id, "0123456789abcdef"):
            r = await c.delete(f"/platform/admin/tokens/{key_id}")
            assert r.status_code == 404, r.text
            missing = r.json()
            r = await c.get(f"/platform/admin/tokens/{key_id}")
            assert r.status_code == 404
        # Another tenant's key answers exactly like a missing one (only the id in the message differs).
        assert missing["code"] == "token_not_found"
        listed = (await c.get("/platform/admin/tokens")).json()["items"]
        assert {k["tenant"] for k in listed} == {"ta"}
        records = (await c.get("/platform/audit", params={"limit": 1000})).json()["items"]
        assert records
        assert {rec["tenant"] for rec in records} == {"ta"}
        assert (await c.get("/platform/audit", params={"tenant": "tb"})).json()["items"] == []
        assert (await c.get("/platform/audit/head")).status_code == 403
    async with s.client(in_tb["token"]) as c:
        assert (await c.get("/platform/whoami")).status_code == 200  # not revoked
    async with s.client(s.admin_token) as c:
        assert (await c.get("/platform/whoami")).status_code == 200


async def test_a_flood_without_credentials_does_not_become_a_flood_of_audit_writes(
    make_secured: Callable[..., Any],
) -> None:
    """docs/security.md: every authentication failure is recorded and failed authentications are limited per
    address; "a flood of refused requests must not become a flood of writes". A request with no Authorization
    header at all is such a failure (401 unauthenticated, audited), so a flood of them must be throttled too."""
    async with make_secured(auth_failure_limit=20, **SLOW) as s:
        async with s.client(address=ATTACKER) as anon:
            statuses = [(await anon.get("/platform/tasks")).status_code for _ in range(200)]
        from_attacker = [rec for rec in await export(s) if rec["source"] == ATTACKER]
        assert statuses.count(401) == 20 and statuses.count(429) == 180, (
            f"credential-less requests are never throttled: {statuses.count(401)} x 401, "
            f"{statuses.count(429)} x 429, {len(from_attacker)} audit records written"
        )
        assert len(from_attacker) <= 23
