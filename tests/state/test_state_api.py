"""The state API over HTTP (in-process ASGI, real SQLite store): writes, CAS, bad input, leases, watch, isolation."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest

from taskplane.services.access import Caller
from tests.security.conftest import Secured


async def _audit_total(s: Secured) -> int:
    async with s.admin() as admin:
        return len((await admin.get("/platform/audit", params={"limit": 1000})).json()["items"])


async def test_put_get_delete_with_revisions_versions_and_etag(secured: Secured) -> None:
    async with secured.admin() as c:
        first = (await c.put("/platform/state/jobs/1", json={"step": 1})).json()
        again = (await c.put("/platform/state/jobs/1", json={"step": 2})).json()
        assert again["revision"] == first["revision"] + 1
        assert again["kv"]["version"] == 2 and again["kv"]["create_revision"] == first["revision"]
        assert again["prev"]["value"] == {"step": 1}
        got = await c.get("/platform/state/jobs/1")
        assert got.json()["value"] == {"step": 2} and got.headers["etag"] == f'"{again["revision"]}"'
        old = await c.get("/platform/state/jobs/1", params={"revision": first["revision"]})
        assert old.json()["value"] == {"step": 1}
        gone = (await c.delete("/platform/state/jobs/1")).json()
        assert gone["deleted"] == 1 and gone["revision"] == again["revision"] + 1
        assert (await c.get("/platform/state/jobs/1")).status_code == 404
        assert (await c.delete("/platform/state/jobs/1")).json()["deleted"] == 0


async def test_if_match_and_if_none_match_make_cas_and_create_only(secured: Secured) -> None:
    async with secured.admin() as c:
        created = await c.put("/platform/state/lock", json="a", headers={"If-None-Match": "*"})
        assert created.status_code == 200
        rev = created.json()["kv"]["mod_revision"]
        taken = await c.put("/platform/state/lock", json="b", headers={"If-None-Match": "*"})
        assert taken.status_code == 412 and taken.json()["mod_revision"] == rev
        assert (await c.put("/platform/state/lock", json="c", headers={"If-Match": str(rev + 5)})).status_code == 412
        swapped = await c.put("/platform/state/lock", json="d", headers={"If-Match": f'"{rev}"'})
        assert swapped.status_code == 200
        assert (await c.delete("/platform/state/lock", headers={"If-Match": str(rev)})).status_code == 412
        assert (await c.get("/platform/state/lock")).json()["value"] == "d"


async def test_keys_named_like_routes_are_ordinary_keys(secured: Secured) -> None:
    async with secured.admin() as c:
        for key in ("transaction", "watch", "a/transaction", "leases"):
            assert (await c.put(f"/platform/state/{key}", json=key)).status_code == 200, key
            assert (await c.get(f"/platform/state/{key}")).json()["value"] == key
        listed = (await c.get("/platform/state")).json()
        assert {kv["key"] for kv in listed["items"]} == {"transaction", "watch", "a/transaction", "leases"}


BAD_WRITES: list[tuple[str, str, dict[str, Any], int, str]] = [
    # (method, path, request kwargs, status, code)
    ("PUT", "/platform/state/a//b", {"json": 1}, 422, "invalid_key"),
    ("PUT", "/platform/state/a/", {"json": 1}, 422, "invalid_key"),
    ("PUT", "/platform/state/" + "k" * 513, {"json": 1}, 422, "invalid_key"),
    ("PUT", "/platform/state/a%00b", {"json": 1}, 422, "invalid_key"),
    ("PUT", "/platform/state/a/%2E%2E/b", {"json": 1}, 422, "invalid_key"),
    ("PUT", "/platform/state/x", {"content": b"{not json"}, 422, "invalid_value"),
    ("PUT", "/platform/state/x", {"content": b'"' + b"v" * (1 << 20) + b'"'}, 413, "payload_too_large"),
    ("PUT", "/platform/state/x", {"json": 1, "headers": {"If-Match": "abc"}}, 422, "invalid_if_match"),
    ("PUT", "/platform/state/x", {"json": 1, "params": {"ttl": 0}}, 422, "invalid_ttl"),
    ("PUT", "/platform/state/x", {"json": 1, "params": {"ttl": -5}}, 422, "invalid_ttl"),
    ("POST", "/platform/leases", {"json": {"ttl": 0}}, 422, "invalid_ttl"),
    (
        "POST",
        "/platform/state/transaction",
        {"json": {"success": [{"op": "put", "key": f"k{i}", "value": i} for i in range(129)]}},
        422,
        "too_many_ops",
    ),
    ("POST", "/platform/state/transaction", {"json": {"success": [{"op": "frobnicate", "key": "k"}]}}, 422, ""),
    (
        "POST",
        "/platform/state/transaction",
        {"json": {"compare": [{"key": "k", "target": "colour", "value": 1}], "success": []}},
        422,
        "",
    ),
    (
        "POST",
        "/platform/state/transaction",
        {
            "json": {
                "compare": [{"key": "k", "target": "version", "value": "one"}],
                "success": [{"op": "delete", "key": "k"}],
            }
        },
        422,
        "invalid_field",
    ),
]


@pytest.mark.parametrize(("method", "path", "kwargs", "status", "code"), BAD_WRITES)
async def test_bad_input_is_a_4xx_problem_and_writes_nothing(
    secured: Secured, method: str, path: str, kwargs: dict[str, Any], status: int, code: str
) -> None:
    async with secured.admin() as c:
        before = (await c.get("/platform/state", params={"limit": 1000})).json()
        r = await c.request(method, path, **kwargs)
        assert r.status_code == status, r.text
        assert r.headers["content-type"].startswith("application/problem+json")
        if code:
            assert r.json()["code"] == code
        after = (await c.get("/platform/state", params={"limit": 1000})).json()
        assert after == before


async def test_a_watch_from_a_compacted_revision_is_410_with_the_oldest(secured: Secured) -> None:
    async with secured.admin() as c:
        for i in range(5):
            await c.put("/platform/state/k", json=i)
        await secured.platform.kv.compact(4)
        r = await c.get("/platform/state", params={"watch": "true", "from_revision": 1})
        assert r.status_code == 410 and r.json()["code"] == "compacted"
        assert r.json()["oldest_revision"] >= 4
        r = await c.get("/platform/state/k", params={"revision": 1})
        assert r.status_code == 410


async def test_a_ttl_key_vanishes_and_never_comes_back(secured: Secured) -> None:
    async with secured.admin() as c:
        put = (await c.put("/platform/state/session", json="alive", params={"ttl": 0.5})).json()
        lease_id = put["kv"]["lease"]
        assert (await c.get(f"/platform/leases/{lease_id}")).json()["keys"] == ["session"]
        await asyncio.sleep(0.7)
        assert (await c.get("/platform/state/session")).status_code == 404  # before or after the sweep alike
        assert (await c.put(f"/platform/leases/{lease_id}/keepalive")).status_code == 404
        await secured.platform.state.sweep()
        assert (await c.get("/platform/state/session")).status_code == 404
        assert (await c.get("/platform/state", params={"revision": put["revision"] + 1})).json()["items"] == []


async def test_revoking_a_lease_deletes_its_keys_in_one_revision(secured: Secured) -> None:
    async with secured.admin() as c:
        lease = (await c.post("/platform/leases", json={"ttl": 60})).json()
        for key in ("w/1", "w/2"):
            assert (await c.put(f"/platform/state/{key}", json=1, params={"lease": lease["id"]})).status_code == 200
        revoked = (await c.delete(f"/platform/leases/{lease['id']}")).json()
        assert (await c.get("/platform/state", params={"prefix": "w/"})).json()["items"] == []
        events = await secured.platform.kv.events("default", "w/", revoked["revision"], 10)
        assert [(e.revision, e.type.value) for e in events] == [(revoked["revision"], "delete")] * 2


async def test_a_transaction_applies_one_branch_atomically(secured: Secured) -> None:
    async with secured.admin() as c:
        await c.put("/platform/state/acct/a", json=10)
        body = {
            "compare": [{"key": "acct/a", "target": "value", "op": "greater", "value": 5}],
            "success": [
                {"op": "put", "key": "acct/a", "value": 5},
                {"op": "put", "key": "acct/b", "value": 5},
                {"op": "get", "key": "acct/b"},
            ],
            "failure": [{"op": "get", "key": "acct/a"}],
        }
        done = (await c.post("/platform/state/transaction", json=body)).json()
        assert done["succeeded"] is True and done["results"][2]["kv"]["value"] == 5
        assert done["results"][0]["kv"]["mod_revision"] == done["results"][1]["kv"]["mod_revision"] == done["revision"]
        body["compare"][0]["value"] = 50
        failed = (await c.post("/platform/state/transaction", json=body)).json()
        assert failed["succeeded"] is False and failed["revision"] == done["revision"]
        # A put with a missing lease in the success branch: nothing of the branch is written.
        bad = {
            "success": [
                {"op": "put", "key": "acct/c", "value": 1},
                {"op": "put", "key": "acct/d", "value": 1, "lease": 999},
            ]
        }
        assert (await c.post("/platform/state/transaction", json=bad)).status_code == 404
        assert (await c.get("/platform/state/acct/c")).status_code == 404


async def test_every_acknowledged_write_has_one_audit_record_in_its_tenant(secured: Secured) -> None:
    async with secured.admin() as c:
        r = await c.put("/platform/state/audited", json=1)
        records = (await c.get("/platform/audit", params={"request_id": r.headers["x-request-id"]})).json()["items"]
        assert [(x["action"], x["tenant"], x["outcome"]) for x in records] == [("state.put", "default", "success")]
        r = await c.put("/platform/state/audited", json=2, headers={"If-Match": "1000"})
        records = (await c.get("/platform/audit", params={"request_id": r.headers["x-request-id"]})).json()["items"]
        assert [x["outcome"] for x in records] == ["rejected"]


async def test_tenants_have_separate_key_spaces(secured: Secured) -> None:
    async with secured.admin() as admin:
        for name in ("ta", "tb"):
            assert (await admin.post("/platform/admin/tenants", json={"name": name})).status_code == 201
        keys = {}
        for name in ("ta", "tb"):
            made = await admin.post(
                "/platform/admin/tokens", json={"owner": "w", "tenant": name, "roles": ["submitter"]}
            )
            keys[name] = made.json()["token"]
    async with secured.client(keys["ta"]) as a, secured.client(keys["tb"]) as b:
        assert (await a.put("/platform/state/shared", json="secret-of-a")).status_code == 200
        assert (await b.get("/platform/state/shared")).status_code == 404
        assert (await b.put("/platform/state/shared", json="b's own")).status_code == 200
        assert (await a.get("/platform/state/shared")).json()["value"] == "secret-of-a"
        assert (await b.get("/platform/state/shared", params={"tenant": "ta"})).status_code == 403
        assert "secret-of-a" not in (await b.get("/platform/state")).text


async def _collect(stream: AsyncIterator[bytes], count: int, timeout: float = 5.0) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = []

    async def read() -> None:
        async for chunk in stream:
            for block in chunk.decode().split("\n\n"):
                data = [line[6:] for line in block.splitlines() if line.startswith("data: ")]
                if data:
                    events.append(json.loads(data[0]))
            if len(events) >= count:
                return

    await asyncio.wait_for(read(), timeout)
    return events


async def test_watchers_that_reconnect_see_every_revision_once_in_order(secured: Secured) -> None:
    caller = Caller.system()
    state = secured.platform.state
    async with secured.admin() as c:
        start = (await c.put("/platform/state/w/0", json=0)).json()["revision"]
        for i in range(1, 30):
            if i % 7 == 0:
                await c.delete(f"/platform/state/w/{i - 1}")
            else:
                await c.put(f"/platform/state/w/{i}", json=i)
        expected = await secured.platform.kv.events("default", "w/", start, 1000)
        seen: list[dict[str, Any]] = []
        next_revision = start
        while len(seen) < len(expected):  # a consumer that disconnects after every 4 events and resumes
            stream = await state.open_watch(caller, "w/", None, next_revision, exact=False)
            got = await _collect(stream, 4)
            await stream.aclose()  # type: ignore[attr-defined]
            got = [e for e in got if e["revision"] >= next_revision]
            # Whole revisions only: drop a revision the batch may have cut (it will come again).
            seen.extend(got)
            next_revision = got[-1]["revision"] + 1
        assert [(e["revision"], e["type"], e["key"]) for e in seen[: len(expected)]] == [
            (e.revision, e.type.value, e.key) for e in expected
        ]
