"""Authentication: API keys and OIDC bearer tokens to a ``Principal`` and its ``Grants``.

    Authorization: Bearer tpk_<id>_<secret>  --> key by id (cached briefly) --> HMAC-SHA256(pepper, secret)
                                                  == stored hash, live?     --> Principal key:<id>
    Authorization: Bearer <JWT>              --> alg in the allow-list, kid in the JWKS, signature, iss, aud,
                                                  exp/nbf                    --> Principal oidc:<sub>
    both                                      + stored role bindings of the subject --> Grants

Keys are hashed with HMAC-SHA256 and a server-side pepper, not a slow password hash: keys are 256 random bits,
so there is nothing to brute-force offline, and a slow hash per request would be a denial-of-service lever.

Failed authentications are counted per source address and per claimed key id (``RateLimiter``): past the
address's limit, its requests are refused with 429 before any credential is looked at; past a key id's limit,
wrong secrets for it are refused with 429 while the right one still works. Revocation through this
service takes effect at once in this process; other replicas drop their cached copy within
``key_cache_seconds``.
"""

from __future__ import annotations

import asyncio
import base64
import hmac
import json
import logging
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import jwt

from taskplane.domain.access import (
    ALL_TENANTS,
    BUILTIN_ROLES,
    ApiKey,
    Binding,
    Grants,
    Principal,
    PrincipalKind,
    Role,
    compute_grants,
)
from taskplane.errors import RateLimitedError, UnauthenticatedError, UnavailableError
from taskplane.services.ports import Clock, SecurityStore
from taskplane.services.ratelimit import RateLimiter

log = logging.getLogger("taskplane.auth")

KEY_PREFIX = "tpk_"
_KEY_ID_BYTES = 8  # 16 hex characters: public, names the key
_SECRET_BYTES = 32  # 256 bits
_USAGE_FLUSH_SECONDS = 5.0

# Asymmetric algorithms only: a server holding no shared secret cannot verify HS*, and refusing them closes the
# HS256-signed-with-the-public-key confusion for good. ``none`` is never accepted.
SUPPORTED_ALGORITHMS = frozenset({"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA"})
_KEY_TYPE_OF = {"RS": "RSA", "PS": "RSA", "ES": "EC", "Ed": "OKP"}


@dataclass(frozen=True, slots=True)
class OidcConfig:
    """A trusted OIDC issuer: where its keys are, and how its claims map to tenants and roles."""

    issuer: str
    audience: str
    jwks_url: str | None = None
    jwks_file: Path | None = None
    algorithms: frozenset[str] = frozenset({"RS256", "ES256"})
    tenants_claim: str = "taskplane_tenants"  # {"tenant": ["role", ...]} or ["tenant:role", ...]
    name_claim: str = "email"
    leeway: float = 30.0
    jwks_refresh_seconds: float = 300.0


@dataclass(frozen=True, slots=True)
class AuthConfig:
    """Authentication settings (read once at the edge)."""

    pepper: bytes
    oidc: OidcConfig | None = None
    key_cache_seconds: float = 1.0
    failure_burst: int = 10  # failed authentications allowed per address (and per claimed key) ...
    failure_window: float = 60.0  # ... refilled over this many seconds
    insecure_no_auth: bool = False


@dataclass(frozen=True, slots=True)
class MintedKey:
    """A new key: the stored row and the token, which exists only here (shown once)."""

    key: ApiKey
    token: str


def new_pepper() -> bytes:
    """A fresh 256-bit pepper."""
    return secrets.token_bytes(32)


def hash_secret(pepper: bytes, secret: str) -> str:
    """The stored form of a key's secret."""
    return hmac.digest(pepper, secret.encode(), "sha256").hex()


def parse_key(token: str) -> tuple[str, str] | None:
    """``(id, secret)`` of a ``tpk_<id>_<secret>`` token, or ``None`` when it does not look like one."""
    if not token.startswith(KEY_PREFIX):
        return None
    key_id, sep, secret = token[len(KEY_PREFIX) :].partition("_")
    if not sep or len(key_id) != 2 * _KEY_ID_BYTES or not secret or len(secret) > 128:
        return None
    if any(c not in "0123456789abcdef" for c in key_id):
        return None
    return key_id, secret


@dataclass(slots=True)
class _Cached:
    value: Any
    at: float


@dataclass(frozen=True, slots=True)
class _Jwk:
    key: jwt.PyJWK
    alg: str | None  # the "alg" the key set declares for it, if any


@dataclass(slots=True)
class _Jwks:
    keys: dict[str, _Jwk] = field(default_factory=dict)
    fetched_at: float = -1e18
    last_refresh_attempt: float = -1e18


class AuthService:
    """Turns credentials into principals and grants; mints and hashes API keys."""

    def __init__(self, store: SecurityStore, clock: Clock, config: AuthConfig) -> None:
        self._store = store
        self._clock = clock
        self._config = config
        self._keys: dict[str, _Cached] = {}
        self._bindings: dict[str, _Cached] = {}
        self._roles: _Cached | None = None
        # Tokens verified within the last ``key_cache_seconds``: token -> (principal, key expiry), so a busy
        # client costs one dict lookup per request. Dropped on any revocation or binding change here.
        self._verified: dict[str, _Cached] = {}
        self._grants: dict[tuple[Binding, ...], Grants] = {}
        self._used: dict[str, datetime] = {}
        self._last_flush = clock.monotonic()
        self._flushing: asyncio.Task[None] | None = None
        self._failures_by_source = RateLimiter(
            config.failure_burst / config.failure_window, config.failure_burst, clock.monotonic
        )
        self._failures_by_key = RateLimiter(
            config.failure_burst / config.failure_window, config.failure_burst, clock.monotonic
        )
        self._jwks = _Jwks()
        self._jwks_lock = asyncio.Lock()
        if config.oidc is not None and config.oidc.jwks_file is not None:
            self._jwks.keys = _load_jwks(config.oidc.jwks_file.read_text())

    @property
    def insecure(self) -> bool:
        """True when authentication is switched off (``--insecure-no-auth``)."""
        return self._config.insecure_no_auth

    # ----------------------------------------------------------------------------------------- keys

    def mint(
        self,
        *,
        owner: str,
        tenant: str,
        roles: tuple[str, ...],
        created_by: str,
        expires_at: datetime | None = None,
        description: str = "",
    ) -> MintedKey:
        """A new key with a random id and secret; store ``result.key``, show ``result.token`` once."""
        key_id = secrets.token_hex(_KEY_ID_BYTES)
        secret = base64.urlsafe_b64encode(secrets.token_bytes(_SECRET_BYTES)).decode().rstrip("=")
        key = ApiKey(
            id=key_id,
            secret_hash=hash_secret(self._config.pepper, secret),
            owner=owner,
            tenant=tenant,
            roles=roles,
            created_at=self._clock.now(),
            created_by=created_by,
            expires_at=expires_at,
            description=description,
        )
        return MintedKey(key, f"{KEY_PREFIX}{key_id}_{secret}")

    def forget_tenant(self, tenant: str) -> None:
        """Drop cached keys of ``tenant`` and all cached bindings (the tenant was deleted, its keys revoked)."""
        for key_id in [k for k, c in self._keys.items() if c.value is not None and c.value.tenant == tenant]:
            del self._keys[key_id]
        self.forget_bindings()

    def forget_key(self, key_id: str) -> None:
        """Drop a cached key (after a revocation) so the next request reads it again."""
        self._keys.pop(key_id, None)
        self._verified.clear()

    def forget_bindings(self, subject: str | None = None) -> None:
        """Drop cached bindings (of one subject, or all) and the role catalog after a change."""
        if subject is None:
            self._bindings.clear()
        else:
            self._bindings.pop(subject, None)
        self._roles = None
        self._verified.clear()
        self._grants.clear()

    async def _key(self, key_id: str) -> ApiKey | None:
        cached = self._keys.get(key_id)
        now = self._clock.monotonic()
        if cached is not None and now - cached.at < self._config.key_cache_seconds:
            found: ApiKey | None = cached.value
            return found
        key = await self._store.get_api_key(key_id)
        self._keys[key_id] = _Cached(key, now)
        if len(self._keys) > 100_000:
            self._keys.clear()
        return key

    # ---------------------------------------------------------------------------------------- roles

    async def roles(self) -> Mapping[str, Role]:
        """Built-in and custom roles by name (custom ones cached like keys)."""
        now = self._clock.monotonic()
        if self._roles is not None and now - self._roles.at < self._config.key_cache_seconds:
            cached: Mapping[str, Role] = self._roles.value
            return cached
        catalog: dict[str, Role] = {s.role.name: s.role for s in await self._store.list_roles()}
        catalog.update(BUILTIN_ROLES)
        if self._roles is None or self._roles.value != catalog:
            self._grants.clear()  # computed with other role definitions
        self._roles = _Cached(catalog, now)
        return catalog

    async def _stored_bindings(self, subject: str) -> tuple[Binding, ...]:
        now = self._clock.monotonic()
        cached = self._bindings.get(subject)
        if cached is not None and now - cached.at < self._config.key_cache_seconds:
            found: tuple[Binding, ...] = cached.value
            return found
        rows = await self._store.list_bindings(subject=subject)
        bindings = tuple(Binding(r.tenant, r.role) for r in rows)
        self._bindings[subject] = _Cached(bindings, now)
        if len(self._bindings) > 100_000:
            self._bindings.clear()
        return bindings

    async def grants(self, principal: Principal) -> Grants:
        """What ``principal`` may do, with the current role definitions."""
        roles = await self.roles()
        found = self._grants.get(principal.bindings)
        if found is None:
            found = compute_grants(principal.bindings, roles)
            if len(self._grants) > 10_000:
                self._grants.clear()
            self._grants[principal.bindings] = found
        return found

    # ------------------------------------------------------------------------------- authenticating

    def throttled(self, source: str) -> float | None:
        """Seconds until ``source`` may try to authenticate again after too many failures, else ``None``."""
        return self._failures_by_source.blocked(source)

    async def authenticate(self, authorization: str | None, source: str) -> Principal:
        """The principal of an ``Authorization`` header; ``UnauthenticatedError`` or ``RateLimitedError``."""
        wait = self._failures_by_source.blocked(source)
        if wait is not None:
            raise RateLimitedError("too many failed authentications from this address", retry_after=wait)
        if not authorization:
            # Counted like a wrong credential: each one is audited, so unthrottled they would be a write flood.
            self._fail(source, None)
            raise UnauthenticatedError("this route needs an API key or a bearer token", reason="missing")
        scheme, _, token = authorization.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            self._fail(source, None)
            raise UnauthenticatedError("use 'Authorization: Bearer <token>'", reason="malformed")
        if token.startswith(KEY_PREFIX):
            return await self._authenticate_key(token, source)
        if token.count(".") == 2 and self._config.oidc is not None:
            return await self._authenticate_jwt(token, source)
        self._fail(source, None)
        raise UnauthenticatedError("the token is not a taskplane API key or an accepted JWT", reason="malformed")

    def _fail(self, source: str, key_id: str | None) -> None:
        self._failures_by_source.take(source)
        if key_id is not None:
            self._failures_by_key.take(key_id)

    async def _authenticate_key(self, token: str, source: str) -> Principal:
        mono = self._clock.monotonic()
        hit = self._verified.get(token)
        if hit is not None and mono - hit.at < self._config.key_cache_seconds:
            principal, expires_at = hit.value
            now = self._clock.now()
            if expires_at is None or now < expires_at:
                self._note_use(principal.key_id, now)
                cached: Principal = principal
                return cached
        parsed = parse_key(token)
        if parsed is None:
            self._fail(source, None)
            raise UnauthenticatedError("malformed API key", reason="malformed")
        key_id, secret = parsed
        key = await self._key(key_id)
        # The hash is computed even for an unknown id, so timing does not tell which ids exist.
        digest = hash_secret(self._config.pepper, secret)
        if key is None or not hmac.compare_digest(digest, key.secret_hash):
            # Wrong secrets for one key id, from any number of addresses, are throttled; the right secret is
            # never refused for it, so knowing a (public) key id is not enough to lock its owner out.
            wait = self._failures_by_key.blocked(key_id)
            if wait is not None:
                raise RateLimitedError("too many failed authentications with this key id", retry_after=wait)
            self._fail(source, key_id)
            raise UnauthenticatedError("invalid API key", reason="invalid", key_id=key_id)
        now = self._clock.now()
        if key.revoked_at is not None:
            self._fail(source, key_id)
            raise UnauthenticatedError("this API key was revoked", reason="revoked", key_id=key_id)
        if key.expires_at is not None and now >= key.expires_at:
            self._fail(source, key_id)
            raise UnauthenticatedError("this API key has expired", reason="expired", key_id=key_id)
        self._note_use(key_id, now)
        own = tuple(Binding(key.tenant, role) for role in key.roles)
        principal = Principal(
            key.subject, PrincipalKind.API_KEY, own + await self._stored_bindings(key.subject), key.owner, key.id
        )
        if len(self._verified) > 10_000:
            self._verified.clear()
        self._verified[token] = _Cached((principal, key.expires_at), mono)
        return principal

    async def _authenticate_jwt(self, token: str, source: str) -> Principal:
        oidc = self._config.oidc
        assert oidc is not None
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            self._fail(source, None)
            raise UnauthenticatedError("malformed bearer token", reason="malformed") from None
        alg = header.get("alg")
        if not isinstance(alg, str) or alg not in oidc.algorithms or alg not in SUPPORTED_ALGORITHMS:
            self._fail(source, None)
            raise UnauthenticatedError(f"token algorithm {alg!r} is not accepted", reason="algorithm")
        kid = header.get("kid")
        jwk = await self._jwk(kid if isinstance(kid, str) else None)
        if jwk is None:
            self._fail(source, None)
            raise UnauthenticatedError("the token's key id is not in the issuer's key set", reason="unknown_kid")
        if jwk.key.key_type != _KEY_TYPE_OF.get(alg[:2]) or jwk.alg not in (None, alg):
            self._fail(source, None)
            raise UnauthenticatedError("the token's algorithm does not match its key", reason="algorithm")
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key=jwk.key.key,
                algorithms=[alg],
                audience=oidc.audience,
                issuer=oidc.issuer,
                leeway=oidc.leeway,
                options={"require": ["exp", "iss", "aud", "sub"], "verify_signature": True},
            )
        except jwt.ExpiredSignatureError:
            self._fail(source, None)
            raise UnauthenticatedError("the token has expired", reason="expired") from None
        except jwt.ImmatureSignatureError:
            self._fail(source, None)
            raise UnauthenticatedError("the token is not valid yet", reason="not_yet_valid") from None
        except (jwt.InvalidAudienceError, jwt.InvalidIssuerError):
            self._fail(source, None)
            raise UnauthenticatedError("the token was issued for someone else", reason="issuer_or_audience") from None
        except jwt.PyJWTError:
            self._fail(source, None)
            raise UnauthenticatedError("the token's signature or claims are invalid", reason="invalid") from None
        subject = f"oidc:{claims['sub']}"
        own = _claimed_bindings(claims.get(oidc.tenants_claim))
        name = claims.get(oidc.name_claim)
        return Principal(
            subject,
            PrincipalKind.OIDC,
            own + await self._stored_bindings(subject),
            name if isinstance(name, str) else str(claims["sub"]),
        )

    async def _jwk(self, kid: str | None) -> _Jwk | None:
        oidc = self._config.oidc
        assert oidc is not None
        found = self._pick(kid)
        if oidc.jwks_url is None:
            return found
        now = self._clock.monotonic()
        stale = now - self._jwks.fetched_at > oidc.jwks_refresh_seconds
        # An unknown kid may be a rotated key: refetch, but at most every 30 s (unknown kids cost no more).
        if stale or (found is None and now - self._jwks.last_refresh_attempt > 30.0):
            async with self._jwks_lock:
                if now - self._jwks.last_refresh_attempt > 30.0 or stale:
                    self._jwks.last_refresh_attempt = now
                    await self._refresh_jwks(oidc.jwks_url)
            found = self._pick(kid)
        return found

    def _pick(self, kid: str | None) -> _Jwk | None:
        if kid is not None:
            return self._jwks.keys.get(kid)
        return next(iter(self._jwks.keys.values())) if len(self._jwks.keys) == 1 else None

    async def _refresh_jwks(self, url: str) -> None:
        try:
            async with httpx.AsyncClient(timeout=5.0) as client:
                response = await client.get(url)
                response.raise_for_status()
            self._jwks.keys = _load_jwks(response.text)
            self._jwks.fetched_at = self._clock.monotonic()
        except (httpx.HTTPError, ValueError, jwt.PyJWTError) as exc:
            log.warning("could not fetch the JWKS from %s: %s", url, exc)
            if not self._jwks.keys:
                raise UnavailableError("the OIDC issuer's key set cannot be fetched") from exc

    # ------------------------------------------------------------------------------------ last used

    def _note_use(self, key_id: str | None, now: datetime) -> None:
        if key_id is None:
            return
        self._used[key_id] = now
        mono = self._clock.monotonic()
        if mono - self._last_flush >= _USAGE_FLUSH_SECONDS and (self._flushing is None or self._flushing.done()):
            self._last_flush = mono
            self._flushing = asyncio.get_running_loop().create_task(self.flush_usage())

    async def flush_usage(self) -> None:
        """Write the keys' last-used times noted since the previous flush."""
        used, self._used = self._used, {}
        if not used:
            return
        try:
            await self._store.touch_api_keys(used)
        except Exception as exc:  # best effort: last-used times are informational
            log.warning("could not record when %d keys were last used: %s", len(used), exc)


def _load_jwks(text: str) -> dict[str, _Jwk]:
    """Keys by ``kid`` from a JWKS document (keys without a kid get their index)."""
    doc = json.loads(text)
    keys: dict[str, _Jwk] = {}
    for i, item in enumerate(doc.get("keys", [])):
        if item.get("kty") == "oct":  # symmetric keys are never accepted
            continue
        try:
            declared = item.get("alg")
            keys[str(item.get("kid", i))] = _Jwk(
                jwt.PyJWK.from_dict(item), declared if isinstance(declared, str) else None
            )
        except jwt.PyJWTError as exc:
            log.warning("skipping JWKS key %s: %s", item.get("kid", i), exc)
    return keys


def _claimed_bindings(claim: Any) -> tuple[Binding, ...]:
    """Bindings from the tenants claim: ``{"a": ["submitter"]}`` or ``["a:submitter"]``; ``"*"`` is refused.

    A token may name roles in tenants, never the platform-wide ``"*"``: platform administrators are bound by
    an explicit role binding of their subject, which only another platform administrator can make.
    """
    found: list[Binding] = []
    if isinstance(claim, dict):
        for tenant, roles in claim.items():
            if isinstance(tenant, str) and tenant != ALL_TENANTS and isinstance(roles, list):
                found.extend(Binding(tenant, r) for r in roles if isinstance(r, str))
    elif isinstance(claim, list):
        for item in claim:
            if isinstance(item, str) and ":" in item:
                tenant, _, role = item.partition(":")
                if tenant and tenant != ALL_TENANTS and role:
                    found.append(Binding(tenant, role))
    return tuple(found)
