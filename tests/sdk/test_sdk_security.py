"""API keys, roles, bindings, whoami and the audit log through both clients: request shapes, decoding, errors."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import httpx
import pytest

from taskplane.domain.audit import Checkpoint
from taskplane.errors import (
    ConflictError,
    ForbiddenError,
    InternalError,
    InvalidRequestError,
    LimitExceededError,
    NotFoundError,
    RateLimitedError,
    UnauthenticatedError,
)
from taskplane.sdk import AsyncClient, Client
from taskplane.sdk.audit_chain import verify_records
from taskplane.sdk.security_calls import decode_audit_lines
from taskplane.wire.security import RuleIn, TokenCreated
from tests.sdk.fakes import (
    FakeApi,
    audit_chain,
    audit_json,
    binding_json,
    ndjson,
    problem,
    role_json,
    token_json,
    whoami_json,
)


def client(api: FakeApi) -> Client:
    return Client("http://tp.test", transport=api.transport, token="tok")


def async_client(api: FakeApi) -> AsyncClient:
    return AsyncClient("http://tp.test", transport=api.transport, token="tok")


def body(api: FakeApi) -> object:
    return json.loads(api.last.content)


# -- whoami and API keys --------------------------------------------------------------------------------------


def test_whoami(api: FakeApi) -> None:
    api.on("GET", "/platform/whoami", httpx.Response(200, json=whoami_json()))

    me = client(api).whoami()

    assert (me.subject, me.kind) == ("key:000000000000", "key")
    assert [(b.tenant, b.role) for b in me.bindings] == [("*", "platform-admin"), ("team-a", "developer")]
    assert api.last.headers["authorization"] == "Bearer tok"


def test_create_token_sends_only_what_was_given(api: FakeApi) -> None:
    api.on("POST", "/platform/admin/tokens", httpx.Response(201, json=token_json(token="tp_secret")))

    created = client(api).create_token("ci", ["developer"])

    assert isinstance(created, TokenCreated) and created.token == "tp_secret"
    assert body(api) == {"owner": "ci", "roles": ["developer"], "description": ""}


def test_create_token_with_every_field(api: FakeApi) -> None:
    api.on("POST", "/platform/admin/tokens", httpx.Response(201, json=token_json(token="tp_secret")))

    client(api).create_token("ci", ("developer", "viewer"), "team-a", timedelta(days=30), "nightly builds")

    assert body(api) == {
        "owner": "ci",
        "roles": ["developer", "viewer"],
        "tenant": "team-a",
        "expires_in": 30 * 86400,
        "description": "nightly builds",
    }


@pytest.mark.parametrize(
    ("args", "field"),
    [
        ({"owner": "ci", "roles": []}, "roles"),
        ({"owner": "", "roles": ["developer"]}, "owner"),
        ({"owner": "ci", "roles": ["developer"], "expires_in": 5}, "expires_in"),
        ({"owner": "ci", "roles": ["developer"], "tenant": "Team A"}, "tenant"),
    ],
)
def test_create_token_validates_before_sending(api: FakeApi, args: dict[str, object], field: str) -> None:
    with pytest.raises(InvalidRequestError, match=field):
        client(api).create_token(**args)  # type: ignore[arg-type]
    assert api.requests == []


def test_list_get_and_revoke_tokens(api: FakeApi) -> None:
    api.on("GET", "/platform/admin/tokens", httpx.Response(200, json={"items": [token_json("a"), token_json("b")]}))
    api.on("GET", "/platform/admin/tokens/a", httpx.Response(200, json=token_json("a")))
    api.on("DELETE", "/platform/admin/tokens/a", httpx.Response(200, json=token_json("a", state="revoked")))
    api.on("GET", "/platform/admin/tokens/x%2Fy", problem(404, "not_found", "no key x/y"))

    tp = client(api)
    assert [t.id for t in tp.list_tokens()] == ["a", "b"]
    assert tp.get_token("a").owner == "ci"
    assert tp.revoke_token("a").state == "revoked"
    with pytest.raises(InvalidRequestError):
        tp.get_token("")
    with pytest.raises(NotFoundError, match="no key"):
        tp.get_token("x/y")  # escaped into one path segment


# -- roles and bindings ---------------------------------------------------------------------------------------


def test_create_role_takes_mappings_or_models(api: FakeApi) -> None:
    api.on("POST", "/platform/admin/roles", httpx.Response(201, json=role_json("reader")))

    role = client(api).create_role(
        "reader",
        [{"verbs": ["get", "list"], "resources": ["tasks"]}, RuleIn(verbs=["get"], resources=["logs"])],
        "read only",
    )

    assert role.name == "reader" and not role.builtin
    assert body(api) == {
        "name": "reader",
        "rules": [{"verbs": ["get", "list"], "resources": ["tasks"]}, {"verbs": ["get"], "resources": ["logs"]}],
        "description": "read only",
    }


def test_create_role_validates_before_sending(api: FakeApi) -> None:
    with pytest.raises(InvalidRequestError, match="name"):
        client(api).create_role("Not A Name", [{"verbs": ["get"], "resources": ["tasks"]}])
    with pytest.raises(InvalidRequestError, match="rules"):
        client(api).create_role("reader", [])
    assert api.requests == []


def test_list_get_and_delete_roles(api: FakeApi) -> None:
    builtin = role_json("platform-admin", builtin=True, rules=[{"verb": "*", "resource": "*"}])
    api.on("GET", "/platform/admin/roles", httpx.Response(200, json={"items": [builtin, role_json("reader")]}))
    api.on("GET", "/platform/admin/roles/reader", httpx.Response(200, json=role_json("reader")))
    api.on("DELETE", "/platform/admin/roles/reader", httpx.Response(204))
    api.on("DELETE", "/platform/admin/roles/busy", problem(409, "role_in_use", "bound 2 times"))

    tp = client(api)
    assert [(r.name, r.builtin) for r in tp.list_roles()] == [("platform-admin", True), ("reader", False)]
    assert {(r.verb, r.resource) for r in tp.get_role("reader").rules} >= {("get", "tasks"), ("list", "logs")}
    assert tp.delete_role("reader") is None
    with pytest.raises(ConflictError) as busy:
        tp.delete_role("busy")
    assert busy.value.code == "role_in_use"


def test_bind_list_and_unbind(api: FakeApi) -> None:
    api.on("POST", "/platform/admin/rolebindings", httpx.Response(201, json=binding_json()))
    api.on("GET", "/platform/admin/rolebindings", httpx.Response(200, json={"items": [binding_json()]}))
    api.on("DELETE", "/platform/admin/rolebindings/rb-1", httpx.Response(204))

    tp = client(api)
    assert tp.bind_role("oidc:alice", "team-a", "reader").id == "rb-1"
    assert body(api) == {"subject": "oidc:alice", "tenant": "team-a", "role": "reader"}
    assert [b.subject for b in tp.list_bindings("oidc:alice")] == ["oidc:alice"]
    assert api.last.url.params["subject"] == "oidc:alice"
    tp.list_bindings()
    assert "subject" not in api.last.url.params
    assert tp.unbind_role("rb-1") is None
    with pytest.raises(InvalidRequestError, match="subject"):
        tp.bind_role("alice", "team-a", "reader")  # neither oidc: nor key:


# -- audit ----------------------------------------------------------------------------------------------------


def test_audit_sends_filters_and_the_cursor(api: FakeApi) -> None:
    records = [audit_json(r) for r in audit_chain(2)]
    api.on("GET", "/platform/audit", httpx.Response(200, json={"items": records, "next_cursor": "2"}))

    page = client(api).audit(
        tenant="team-a",
        principal="oidc:alice",
        action="tasks.create",
        outcome="denied",
        request_id="req-1",
        since=datetime(2024, 5, 1, 12, tzinfo=UTC),
        until=datetime(2024, 5, 2, 14, tzinfo=UTC),
        after="0",
        limit=2,
    )

    assert [r.seq for r in page.items] == [1, 2] and page.next_cursor == "2"
    assert list(api.last.url.params.multi_items()) == [
        ("tenant", "team-a"),
        ("principal", "oidc:alice"),
        ("action", "tasks.create"),
        ("outcome", "denied"),
        ("request_id", "req-1"),
        ("since", "2024-05-01T12:00:00Z"),
        ("until", "2024-05-02T14:00:00Z"),
        ("limit", "2"),
        ("after", "0"),
    ]


def test_audit_refuses_naive_times(api: FakeApi) -> None:
    with pytest.raises(InvalidRequestError, match="since"):
        client(api).audit(since=datetime(2024, 5, 1))
    assert api.requests == []


def test_iter_audit_follows_cursors(api: FakeApi) -> None:
    chain = [audit_json(r) for r in audit_chain(3)]
    pages = {None: {"items": chain[:2], "next_cursor": "2"}, "2": {"items": chain[2:], "next_cursor": None}}
    api.on("GET", "/platform/audit", lambda r: httpx.Response(200, json=pages[r.url.params.get("after")]))

    seqs = [r.seq for r in client(api).iter_audit(outcome="success", page_size=2)]

    assert seqs == [1, 2, 3]
    assert [r.url.params["outcome"] for r in api.requests] == ["success", "success"]
    assert [r.url.params["limit"] for r in api.requests] == ["2", "2"]


def test_export_audit_streams_json_lines(api: FakeApi) -> None:
    chain = audit_chain(3)
    content = ndjson(chain[:2]) + b"\n" + ndjson(chain[2:])  # a blank line is skipped
    api.on("GET", "/platform/audit/export", httpx.Response(200, content=content))

    records = list(client(api).export_audit(since=datetime(2024, 5, 1, tzinfo=UTC)))

    assert [r.seq for r in records] == [1, 2, 3]
    assert records[0].detail == {"n": 0, "labels": {"team": "data"}, "note": "é"}
    assert records[2].hash == chain[2].hash
    assert api.last.url.params["since"] == "2024-05-01T00:00:00Z"


def test_export_audit_errors(api: FakeApi) -> None:
    api.on("GET", "/platform/audit/export", problem(403, "forbidden", "no audit access"))
    with pytest.raises(ForbiddenError, match="no audit access"):
        list(client(api).export_audit())

    api.on("GET", "/platform/audit/export", httpx.Response(200, content=ndjson(audit_chain(1)) + b"{not json\n"))
    with pytest.raises(InternalError, match="line 2"):
        list(client(api).export_audit())


def test_audit_head(api: FakeApi) -> None:
    api.on("GET", "/platform/audit/head", httpx.Response(200, json={"seq": 7, "hash": "ab" * 32}))
    assert client(api).audit_head().seq == 7


# -- the new error codes --------------------------------------------------------------------------------------


def test_unauthenticated_and_forbidden(api: FakeApi) -> None:
    api.on("GET", "/platform/whoami", problem(401, "unauthenticated", "the token was revoked"))
    api.on("GET", "/platform/admin/tokens", problem(403, "forbidden", "no role grants list tokens"))

    with pytest.raises(UnauthenticatedError) as who:
        client(api).whoami()
    assert who.value.status == 401  # type: ignore[attr-defined]
    with pytest.raises(ForbiddenError):
        client(api).list_tokens()


@pytest.mark.parametrize(
    ("members", "headers", "seconds"),
    [
        ({"retry_after": 7}, {"Retry-After": "30"}, 7),  # the problem's member wins
        ({}, {"Retry-After": "12"}, 12),
        ({}, {"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"}, 1),
        ({}, {}, 1),
    ],
)
def test_rate_limited_keeps_retry_after(
    api: FakeApi, members: dict[str, object], headers: dict[str, str], seconds: int
) -> None:
    api.on("GET", "/platform/whoami", problem(429, "rate_limited", "slow down", headers=headers, **members))

    with pytest.raises(RateLimitedError) as info:
        client(api).whoami()

    assert isinstance(info.value, LimitExceededError)
    assert info.value.retry_after == seconds
    assert info.value.code == "rate_limited"


# -- the asyncio client ---------------------------------------------------------------------------------------


async def test_async_keys_roles_and_bindings(api: FakeApi) -> None:
    api.on("GET", "/platform/whoami", httpx.Response(200, json=whoami_json()))
    api.on("POST", "/platform/admin/tokens", httpx.Response(201, json=token_json(token="tp_secret")))
    api.on("GET", "/platform/admin/tokens", httpx.Response(200, json={"items": [token_json("a")]}))
    api.on("GET", "/platform/admin/tokens/a", httpx.Response(200, json=token_json("a")))
    api.on("DELETE", "/platform/admin/tokens/a", httpx.Response(200, json=token_json("a", state="revoked")))
    api.on("GET", "/platform/admin/roles", httpx.Response(200, json={"items": [role_json()]}))
    api.on("GET", "/platform/admin/roles/reader", httpx.Response(200, json=role_json()))
    api.on("POST", "/platform/admin/roles", httpx.Response(201, json=role_json()))
    api.on("DELETE", "/platform/admin/roles/reader", httpx.Response(204))
    api.on("POST", "/platform/admin/rolebindings", httpx.Response(201, json=binding_json()))
    api.on("GET", "/platform/admin/rolebindings", httpx.Response(200, json={"items": [binding_json()]}))
    api.on("DELETE", "/platform/admin/rolebindings/rb-1", httpx.Response(204))

    async with async_client(api) as tp:
        assert (await tp.whoami()).name == "platform-admin"
        assert (await tp.create_token("ci", ["developer"], expires_in=3600)).token == "tp_secret"
        assert body(api) == {"owner": "ci", "roles": ["developer"], "expires_in": 3600, "description": ""}
        assert [t.id for t in await tp.list_tokens()] == ["a"]
        assert (await tp.get_token("a")).id == "a"
        assert (await tp.revoke_token("a")).state == "revoked"
        assert [r.name for r in await tp.list_roles()] == ["reader"]
        assert (await tp.get_role("reader")).name == "reader"
        await tp.create_role("reader", [{"verbs": ["get"], "resources": ["tasks"]}])
        assert body(api) == {"name": "reader", "rules": [{"verbs": ["get"], "resources": ["tasks"]}], "description": ""}
        assert await tp.delete_role("reader") is None
        assert (await tp.bind_role("oidc:alice", "team-a", "reader")).id == "rb-1"
        assert len(await tp.list_bindings(subject="oidc:alice")) == 1
        assert await tp.unbind_role("rb-1") is None

    assert all(r.headers["authorization"] == "Bearer tok" for r in api.requests)


async def test_async_audit(api: FakeApi) -> None:
    chain = audit_chain(3)
    pages = {
        None: {"items": [audit_json(r) for r in chain[:2]], "next_cursor": "2"},
        "2": {"items": [audit_json(chain[2])], "next_cursor": None},
    }
    api.on("GET", "/platform/audit", lambda r: httpx.Response(200, json=pages[r.url.params.get("after")]))
    api.on("GET", "/platform/audit/export", httpx.Response(200, content=ndjson(chain)))
    api.on("GET", "/platform/audit/head", httpx.Response(200, json={"seq": 3, "hash": chain[2].hash}))

    async with async_client(api) as tp:
        page = await tp.audit(tenant="team-a", limit=2)
        assert page.next_cursor == "2" and api.last.url.params["tenant"] == "team-a"
        assert [r.seq async for r in tp.iter_audit(page_size=2)] == [1, 2, 3]
        assert [r.hash async for r in tp.export_audit()] == [r.hash for r in chain]
        assert (await tp.audit_head()).hash == chain[2].hash


async def test_async_export_errors(api: FakeApi) -> None:
    api.on("GET", "/platform/audit/export", problem(401, "unauthenticated", "no token"))
    async with async_client(api) as tp:
        with pytest.raises(UnauthenticatedError):
            [r async for r in tp.export_audit()]


# -- checking an export away from the server --------------------------------------------------------------------


def test_an_export_read_back_from_json_verifies(api: FakeApi) -> None:
    chain = audit_chain(4)
    api.on("GET", "/platform/audit/export", httpx.Response(200, content=ndjson(chain)))

    report = verify_records(client(api).export_audit(), checkpoints=[Checkpoint(2, chain[1].hash)])

    assert report.ok and report.count == 4
    assert report.last == Checkpoint(4, chain[3].hash)


def test_a_naive_time_is_read_as_utc() -> None:
    (record,) = audit_chain(1)
    naive = audit_json(record) | {"at": record.entry.at.replace(tzinfo=None).isoformat()}

    report = verify_records(decode_audit_lines([json.dumps(naive)]), head=Checkpoint(1, record.hash))

    assert report.ok


def test_a_report_names_the_first_break() -> None:
    chain = audit_chain(3)
    lines = [json.dumps(audit_json(r)) for r in chain]
    lines[1] = lines[1].replace('"req-1"', '"req-x"')

    report = verify_records(decode_audit_lines(lines))

    assert not report.ok and report.broken is not None
    assert (report.broken.kind, report.broken.seq, report.count) == ("edited", 2, 1)
    assert report.last == Checkpoint(1, chain[0].hash)
