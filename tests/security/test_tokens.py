"""Token attacks: forged, misissued and stale JWTs and API keys are refused (401) and each refusal is audited.

The issuer's keys are real (an RSA and an EC key made here); tokens are signed with PyJWT, and the forgeries
PyJWT refuses to make (``alg: none``, HS256 keyed with the RSA public key) are assembled by hand.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from taskplane.services.clock import SystemClock
from tests.security.conftest import Secured

ISSUER = "https://issuer.example"
AUDIENCE = "taskplane"
TASK = {"command": ["true"], "simulated_duration": 60}


# --------------------------------------------------------------------------------------------- the issuer


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _b64json(doc: dict[str, Any]) -> str:
    return _b64(json.dumps(doc, separators=(",", ":")).encode())


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def ec_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def jwk_of(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey, kid: str) -> dict[str, Any]:
    """The public JWK of ``key`` with its kid."""
    if isinstance(key, rsa.RSAPrivateKey):
        doc = RSAAlgorithm.to_jwk(key.public_key(), as_dict=True)
    else:
        doc = ECAlgorithm.to_jwk(key.public_key(), as_dict=True)
    return {**doc, "kid": kid, "use": "sig"}


@dataclass
class Issuer:
    """An OIDC issuer's signing keys; ``token`` signs claims (valid ones unless told otherwise)."""

    rsa: rsa.RSAPrivateKey = field(default_factory=rsa_key)
    ec: ec.EllipticCurvePrivateKey = field(default_factory=ec_key)

    def jwks(self) -> dict[str, Any]:
        return {"keys": [jwk_of(self.rsa, "rsa-1"), jwk_of(self.ec, "ec-1")]}

    def claims(self, sub: str = "alice", **extra: Any) -> dict[str, Any]:
        now = int(time.time())
        return {
            "iss": ISSUER,
            "aud": AUDIENCE,
            "sub": sub,
            "iat": now,
            "exp": now + 600,
            "email": f"{sub}@example.com",
            **extra,
        }

    def token(
        self,
        claims: dict[str, Any] | None = None,
        *,
        alg: str = "RS256",
        kid: str = "rsa-1",
        key: Any = None,
    ) -> str:
        signing = key if key is not None else (self.rsa if alg.startswith(("RS", "PS")) else self.ec)
        return jwt.encode(claims or self.claims(), signing, algorithm=alg, headers={"kid": kid})


def unsigned_token(claims: dict[str, Any], kid: str = "rsa-1") -> str:
    """``alg: none``: no signature at all."""
    return f"{_b64json({'alg': 'none', 'typ': 'JWT', 'kid': kid})}.{_b64json(claims)}."


def hs256_with_public_pem(issuer: Issuer, claims: dict[str, Any], kid: str = "rsa-1") -> str:
    """The algorithm-confusion forgery: HS256 keyed with the RSA public key's PEM (what a naive verifier uses)."""
    pem = issuer.rsa.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    signing_input = f"{_b64json({'alg': 'HS256', 'typ': 'JWT', 'kid': kid})}.{_b64json(claims)}"
    signature = hmac.new(pem, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{_b64(signature)}"


def with_claims(token: str, **changes: Any) -> str:
    """``token`` with its payload changed and its signature kept."""
    header, payload, signature = token.split(".")
    claims = json.loads(_unb64(payload))
    claims.update(changes)
    return f"{header}.{_b64json(claims)}.{signature}"


# ----------------------------------------------------------------------------------------------- fixtures


@pytest.fixture
def issuer() -> Issuer:
    return Issuer()


@pytest.fixture
async def oidc(make_secured: Callable[..., Any], issuer: Issuer, tmp_path: Path) -> AsyncIterator[Secured]:
    """A secured platform trusting ``issuer`` through a JWKS file; failures are not throttled here."""
    jwks = tmp_path / "jwks.json"
    jwks.write_text(json.dumps(issuer.jwks()))
    async with make_secured(
        oidc_issuer=ISSUER, oidc_audience=AUDIENCE, oidc_jwks_file=jwks, auth_failure_limit=100_000
    ) as s:
        async with s.admin() as admin:
            for name in ("ta", "tb"):
                r = await admin.post("/platform/admin/tenants", json={"name": name})
                assert r.status_code == 201, r.text
        yield s


async def audit_of(secured: Secured, request_id: str) -> list[dict[str, Any]]:
    """The audit records of one request, as the platform admin reads them."""
    async with secured.admin() as admin:
        r = await admin.get("/platform/audit", params={"request_id": request_id})
        assert r.status_code == 200, r.text
        items: list[dict[str, Any]] = r.json()["items"]
        return items


async def all_audit(secured: Secured) -> list[dict[str, Any]]:
    async with secured.admin() as admin:
        r = await admin.get("/platform/audit/export")
        assert r.status_code == 200, r.text
        return [json.loads(line) for line in r.text.splitlines() if line.strip()]


async def assert_refused(secured: Secured, token: str, reason: str, *, address: str = "127.0.0.1") -> None:
    """``token`` gets 401 and leaves exactly one ``auth.authenticate`` record with ``reason``."""
    async with secured.client(token, address=address) as c:
        r = await c.get("/platform/whoami")
    assert r.status_code == 401, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    assert r.json()["code"] == "unauthenticated"
    assert r.headers["www-authenticate"].startswith("Bearer")
    records = await audit_of(secured, r.headers["x-request-id"])
    assert len(records) == 1, records
    (record,) = records
    assert record["action"] == "auth.authenticate"
    assert record["outcome"] == "unauthenticated"
    assert record["status"] == 401
    assert record["source"] == address
    assert record["detail"]["reason"] == reason
    assert token not in json.dumps(record)


# --------------------------------------------------------------------------------------------- JWT attacks


async def test_alg_none_is_refused(oidc: Secured, issuer: Issuer) -> None:
    await assert_refused(oidc, unsigned_token(issuer.claims()), "algorithm")
    await assert_refused(oidc, unsigned_token(issuer.claims(), kid="ec-1"), "algorithm")


async def test_hs256_signed_with_the_rsa_public_key_is_refused(oidc: Secured, issuer: Issuer) -> None:
    await assert_refused(oidc, hs256_with_public_pem(issuer, issuer.claims()), "algorithm")


async def test_unknown_kid_is_refused(oidc: Secured, issuer: Issuer) -> None:
    await assert_refused(oidc, issuer.token(kid="rsa-2"), "unknown_kid")


async def test_wrong_issuer_is_refused(oidc: Secured, issuer: Issuer) -> None:
    await assert_refused(oidc, issuer.token(issuer.claims(iss="https://evil.example")), "issuer_or_audience")


async def test_wrong_audience_is_refused(oidc: Secured, issuer: Issuer) -> None:
    await assert_refused(oidc, issuer.token(issuer.claims(aud="someone-else")), "issuer_or_audience")


async def test_expired_token_is_refused(oidc: Secured, issuer: Issuer) -> None:
    past = int(time.time()) - 3600  # far beyond the 30 s leeway
    await assert_refused(oidc, issuer.token(issuer.claims(iat=past - 600, exp=past)), "expired")


async def test_token_without_exp_is_refused(oidc: Secured, issuer: Issuer) -> None:
    claims = issuer.claims()
    del claims["exp"]
    await assert_refused(oidc, issuer.token(claims), "invalid")


async def test_token_not_valid_yet_is_refused(oidc: Secured, issuer: Issuer) -> None:
    await assert_refused(oidc, issuer.token(issuer.claims(nbf=int(time.time()) + 3600)), "not_yet_valid")


async def test_tampered_claims_are_refused(oidc: Secured, issuer: Issuer) -> None:
    genuine = issuer.token(issuer.claims(taskplane_tenants={"ta": ["viewer"]}))
    async with oidc.client(genuine) as c:
        assert (await c.get("/platform/whoami")).status_code == 200
    await assert_refused(oidc, with_claims(genuine, taskplane_tenants={"ta": ["tenant-admin"]}), "invalid")
    await assert_refused(oidc, with_claims(genuine, sub="bob"), "invalid")


async def test_token_signed_by_another_key_with_a_known_kid_is_refused(oidc: Secured, issuer: Issuer) -> None:
    await assert_refused(oidc, issuer.token(kid="rsa-1", key=rsa_key()), "invalid")
    await assert_refused(oidc, issuer.token(alg="ES256", kid="ec-1", key=ec_key()), "invalid")


async def test_algorithm_that_does_not_match_the_key_is_refused(oidc: Secured, issuer: Issuer) -> None:
    # RS256 naming the EC key's kid (signed with the RSA key, so only the key-type check can stop it) ...
    await assert_refused(oidc, issuer.token(alg="RS256", kid="ec-1"), "algorithm")
    # ... and ES256 naming the RSA key's kid.
    await assert_refused(oidc, issuer.token(alg="ES256", kid="rsa-1"), "algorithm")


async def test_algorithm_outside_the_allow_list_is_refused(oidc: Secured, issuer: Issuer) -> None:
    # PS256 is an asymmetric algorithm the server supports, but the default allow-list is RS256, ES256.
    await assert_refused(oidc, issuer.token(alg="PS256", kid="rsa-1"), "algorithm")


@pytest.mark.parametrize("claim", [{"*": ["platform-admin"]}, ["*:platform-admin"]], ids=["mapping", "list"])
async def test_a_token_cannot_make_itself_platform_admin(oidc: Secured, issuer: Issuer, claim: Any) -> None:
    token = issuer.token(issuer.claims(sub="mallory", taskplane_tenants=claim))
    async with oidc.client(token) as c:
        r = await c.get("/platform/whoami")
        assert r.status_code == 200, r.text
        me = r.json()
        assert me["subject"] == "oidc:mallory"
        assert all(b["tenant"] != "*" for b in me["bindings"]), me
        assert (await c.post("/platform/admin/tenants", json={"name": "evil"})).status_code == 403
        assert (await c.get("/platform/audit/head")).status_code == 403
        assert (await c.get("/platform/admin/tokens")).status_code == 403
        r = await c.post("/platform/admin/tokens", json={"owner": "x", "tenant": "*", "roles": ["platform-admin"]})
        assert r.status_code == 403
        assert (await c.get("/metrics")).status_code == 403
        assert (await c.post("/platform/tasks", json={**TASK, "tenant": "ta"})).status_code == 403


async def test_valid_token_acts_in_its_tenant_only(oidc: Secured, issuer: Issuer) -> None:
    token = issuer.token(issuer.claims(sub="alice", taskplane_tenants={"ta": ["submitter"]}))
    async with oidc.client(token) as c:
        r = await c.get("/platform/whoami")
        assert r.status_code == 200, r.text
        me = r.json()
        assert me["subject"] == "oidc:alice"
        assert me["kind"] == "oidc"
        assert me["name"] == "alice@example.com"
        assert me["bindings"] == [{"tenant": "ta", "role": "submitter"}]
        r = await c.post("/platform/tasks", json={**TASK, "tenant": "ta"})
        assert r.status_code == 201, r.text
        assert r.json()["owner"] == "oidc:alice"
        r = await c.post("/platform/tasks", json=TASK)  # no tenant named: its only tenant
        assert r.status_code == 201, r.text
        assert r.json()["tenant"] == "ta"
        r = await c.post("/platform/tasks", json={**TASK, "tenant": "tb"})
        assert r.status_code == 403, r.text
    async with oidc.admin() as admin:
        r = await admin.get("/platform/tasks", params={"limit": 1000})
        tenants = {t["tenant"] for t in r.json()["items"]}
        assert tenants == {"ta"}


async def test_list_form_of_the_tenants_claim(oidc: Secured, issuer: Issuer) -> None:
    token = issuer.token(issuer.claims(sub="carol", taskplane_tenants=["tb:viewer"]), alg="ES256", kid="ec-1")
    async with oidc.client(token) as c:
        me = (await c.get("/platform/whoami")).json()
        assert me["bindings"] == [{"tenant": "tb", "role": "viewer"}]
        assert (await c.get("/platform/tasks")).status_code == 200
        assert (await c.post("/platform/tasks", json={**TASK, "tenant": "tb"})).status_code == 403


# ------------------------------------------------------------------------------------------ JWKS over HTTP


class JwksServer:
    """A loopback HTTP server serving a JWKS document that a test may change; counts the fetches."""

    def __init__(self, doc: dict[str, Any]) -> None:
        self.doc = doc
        self.fetches = 0
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                outer.fetches += 1
                body = json.dumps(outer.doc).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/jwks.json"

    @contextmanager
    def running(self) -> Iterator[JwksServer]:
        thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        thread.start()
        try:
            yield self
        finally:
            self.httpd.shutdown()
            self.httpd.server_close()
            thread.join(5)


class SkewedClock(SystemClock):
    """The real clock, ``offset`` seconds later (monotonic and wall time alike)."""

    def __init__(self, offset: float) -> None:
        self.offset = offset

    def now(self) -> datetime:
        return super().now() + timedelta(seconds=self.offset)

    def monotonic(self) -> float:
        return super().monotonic() + self.offset


async def test_jwks_url_and_key_rotation(
    make_secured: Callable[..., Any], issuer: Issuer, monkeypatch: pytest.MonkeyPatch
) -> None:
    served = JwksServer({"keys": [jwk_of(issuer.rsa, "rsa-1")]})
    with served.running():
        async with make_secured(
            oidc_issuer=ISSUER, oidc_audience=AUDIENCE, oidc_jwks_url=served.url, auth_failure_limit=100_000
        ) as s:
            first = issuer.token(issuer.claims(sub="dave"))
            async with s.client(first) as c:
                r = await c.get("/platform/whoami")
                assert r.status_code == 200, r.text
                assert r.json()["subject"] == "oidc:dave"
            assert served.fetches == 1

            # The issuer rotates: a new key appears in its JWKS.
            rotated = rsa_key()
            served.doc = {"keys": [jwk_of(issuer.rsa, "rsa-1"), jwk_of(rotated, "rsa-2")]}
            second = issuer.token(issuer.claims(sub="erin"), kid="rsa-2", key=rotated)
            # Within 30 s of the last fetch an unknown kid does not refetch (documented: at most every 30 s).
            await assert_refused(s, second, "unknown_kid")
            assert served.fetches == 1

            # Past the 30 s: the unknown kid triggers a refetch and the rotated key is accepted.
            monkeypatch.setattr(s.platform.auth, "_clock", SkewedClock(31.0))
            async with s.client(second) as c:
                r = await c.get("/platform/whoami")
                assert r.status_code == 200, r.text
                assert r.json()["subject"] == "oidc:erin"
            assert served.fetches == 2
            async with s.client(first) as c:  # the old key still works
                assert (await c.get("/platform/whoami")).status_code == 200


# ------------------------------------------------------------------------------------------------ API keys


async def create_key(secured: Secured, **body: Any) -> dict[str, Any]:
    async with secured.admin() as admin:
        r = await admin.post("/platform/admin/tokens", json={"owner": "svc", **body})
        assert r.status_code == 201, r.text
        created: dict[str, Any] = r.json()
        return created


async def test_revoked_key_is_refused_at_once(secured: Secured) -> None:
    key = await create_key(secured, tenant="*", roles=["viewer"])
    async with secured.client(key["token"]) as c:
        assert (await c.get("/platform/tasks")).status_code == 200
        async with secured.admin() as admin:
            r = await admin.delete(f"/platform/admin/tokens/{key['id']}")
            assert r.status_code == 200, r.text
            assert r.json()["state"] == "revoked"
        r = await c.get("/platform/tasks")
        assert r.status_code == 401
    await assert_refused(secured, key["token"], "revoked")


async def test_expired_key_is_refused(secured: Secured, monkeypatch: pytest.MonkeyPatch) -> None:
    key = await create_key(secured, tenant="*", roles=["viewer"], expires_in=60)
    async with secured.client(key["token"]) as c:
        assert (await c.get("/platform/whoami")).status_code == 200
    # Two minutes later, as far as authentication is concerned.
    monkeypatch.setattr(secured.platform.auth, "_clock", SkewedClock(120.0))
    await assert_refused(secured, key["token"], "expired")


async def test_wrong_secret_for_an_existing_key_id_is_refused(secured: Secured) -> None:
    key = await create_key(secured, tenant="*", roles=["viewer"])
    forged = f"tpk_{key['id']}_" + _b64(b"\x00" * 32)
    await assert_refused(secured, forged, "invalid")
    records = await audit_of_principal(secured, f"key:{key['id']}")
    assert [r["outcome"] for r in records] == ["unauthenticated"]
    async with secured.client(key["token"]) as c:  # the genuine key still works
        assert (await c.get("/platform/whoami")).status_code == 200


async def test_malformed_and_unknown_keys_are_refused(secured: Secured) -> None:
    await assert_refused(secured, "tpk_nothex_secret", "malformed")
    await assert_refused(secured, "tpk_0123456789abcdef_" + _b64(b"\x01" * 32), "invalid")
    await assert_refused(secured, "not-a-token-at-all", "malformed")


async def audit_of_principal(secured: Secured, principal: str) -> list[dict[str, Any]]:
    async with secured.admin() as admin:
        r = await admin.get("/platform/audit", params={"principal": principal})
        assert r.status_code == 200, r.text
        items: list[dict[str, Any]] = r.json()["items"]
        return items


async def test_key_secrets_appear_only_in_the_create_response(secured: Secured) -> None:
    async with secured.admin() as admin:
        assert (await admin.post("/platform/admin/tenants", json={"name": "ta"})).status_code == 201
    created = [
        await create_key(secured, tenant="*", roles=["viewer"]),
        await create_key(secured, tenant="ta", roles=["submitter"], description="ci"),
    ]
    secrets = [secured.admin_token.split("_", 2)[2]]
    for key in created:
        assert key["token"].startswith(f"tpk_{key['id']}_")
        secrets.append(key["token"].split("_", 2)[2])
    # Use each key, fail with a wrong secret, revoke one: all of it is audited.
    wrong = f"tpk_{created[0]['id']}_" + _b64(b"\x02" * 32)
    secrets.append(wrong.split("_", 2)[2])
    for token in (created[0]["token"], created[1]["token"], wrong):
        async with secured.client(token) as c:
            await c.post("/platform/tasks", json={**TASK, "tenant": "ta"})
    seen: list[str] = []
    async with secured.admin() as admin:
        r = await admin.delete(f"/platform/admin/tokens/{created[1]['id']}")
        assert r.status_code == 200
        seen.append(r.text)
        r = await admin.get("/platform/admin/tokens")
        assert r.status_code == 200
        seen.append(r.text)
        for item in r.json()["items"]:
            assert "token" not in item
            assert "secret_hash" not in item
        for key in created:
            r = await admin.get(f"/platform/admin/tokens/{key['id']}")
            assert r.status_code == 200
            assert "token" not in r.json()
            seen.append(r.text)
        r = await admin.get("/platform/audit", params={"limit": 1000})
        seen.append(r.text)
        r = await admin.get("/platform/audit/export")
        seen.append(r.text)
    everything = "\n".join(seen)
    assert "tpk_" not in everything
    for secret in secrets:
        assert secret not in everything
