"""The security gate every request passes before routing: limits, authentication, the route's permission, audit.

    request --> header size (431) --> route rule (api/permissions.py)
            --> public? ----------------------------------------------------------------> app
            --> address throttled after failed logins? (429) --> authenticate (401)
            --> tenant request rate (429) --> route permission held somewhere? (403)
            --> scope["state"]["caller"] = Caller --> app (services check the object's tenant)
    response start --> mutating request not yet audited, or a denial? write its audit record now
                       (a mutation whose record cannot be written answers 503: nothing was changed)
                   --> X-Request-Id and security headers on every response

A pure ASGI middleware (no ``BaseHTTPMiddleware``): it runs before the body is read, so an unauthenticated
caller learns nothing from body validation, and it adds no task hop per request.
"""

from __future__ import annotations

import ipaddress
import logging
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from starlette.routing import BaseRoute
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from taskplane.api.errors import error_response, problem
from taskplane.api.permissions import AUTHENTICATED, MUTATING, ROUTES, Rule
from taskplane.domain.access import ALL_TENANTS, Binding, Principal, PrincipalKind
from taskplane.domain.audit import AuditEntry, AuditOutcome
from taskplane.errors import (
    ForbiddenError,
    RateLimitedError,
    TaskplaneError,
    UnauthenticatedError,
    UnavailableError,
)
from taskplane.services.access import Caller
from taskplane.services.auth import AuthService
from taskplane.services.ids import new_request_id
from taskplane.services.ratelimit import RateLimiter
from taskplane.services.security import AuditService

log = logging.getLogger("taskplane.security")

ANONYMOUS_ADMIN = Principal(
    "anonymous", PrincipalKind.ANONYMOUS, (Binding(ALL_TENANTS, "platform-admin"),), "anonymous"
)

_SECURITY_HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (b"content-security-policy", b"default-src 'none'; frame-ancestors 'none'"),
    (b"cross-origin-resource-policy", b"same-origin"),
]
_HSTS = (b"strict-transport-security", b"max-age=31536000")


@dataclass(frozen=True, slots=True)
class GateConfig:
    """The HTTP-level security settings."""

    trusted_proxies: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    max_header_bytes: int = 16 << 10
    tenant_rate: float = 1000.0  # requests per second per tenant; 0 switches the limit off
    tenant_burst: float = 2000.0
    tls: bool = False


def outcome_of(status: int) -> str:
    """The audit outcome of an HTTP status."""
    if status < 400:
        return AuditOutcome.SUCCESS
    if status == 401:
        return AuditOutcome.UNAUTHENTICATED
    if status == 403:
        return AuditOutcome.DENIED
    if status == 429:
        return AuditOutcome.THROTTLED
    return AuditOutcome.ERROR if status >= 500 else AuditOutcome.REJECTED


class SecurityMiddleware:
    """See the module docstring."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        routes: Sequence[BaseRoute],
        auth: AuthService,
        audit: AuditService,
        now: Callable[[], datetime],
        monotonic: Callable[[], float],
        config: GateConfig,
    ) -> None:
        self.app = app
        self._routes = routes
        self._auth = auth
        self._audit = audit
        self._now = now
        self._monotonic = monotonic
        self._config = config
        self._tenant_limiter = (
            RateLimiter(config.tenant_rate, config.tenant_burst, monotonic) if config.tenant_rate > 0 else None
        )
        self._throttle_noted: dict[str, float] = {}
        # (path pattern, rule by method) in the router's order; routes of one path share an entry.
        self._patterns: list[tuple[re.Pattern[str], dict[str, Rule]]] = []
        by_path: dict[str, dict[str, Rule]] = {}
        for route in routes:
            path, pattern = getattr(route, "path", None), getattr(route, "path_regex", None)
            if not isinstance(path, str) or pattern is None:
                continue
            if path not in by_path:
                by_path[path] = {}
                self._patterns.append((pattern, by_path[path]))
            for method in getattr(route, "methods", None) or ():
                rule = ROUTES.get(("GET" if method == "HEAD" else method, path))
                if rule is not None:
                    by_path[path].setdefault(method, rule)

    # ------------------------------------------------------------------------------------- helpers

    def _rule(self, scope: Scope) -> Rule | None:
        """The matched route's rule; ``None`` when no route matches the path (a 404 after authentication).

        Matches the routes' own path patterns in the router's order, as the router will (without building the
        child scope a full ``route.matches`` builds). A path whose route lacks the method (405 later) takes any
        rule of that path.
        """
        method = "GET" if scope["method"] == "HEAD" else scope["method"]
        path = scope["path"]
        partial: Rule | None = None
        for pattern, rules in self._patterns:
            if pattern.match(path) is None:
                continue
            found = rules.get(method)
            if found is not None:
                return found
            if partial is None:
                partial = next(iter(rules.values()), None)
        # Another method of a public path (POST /healthz) is public only in its GET form: authenticate, then 405.
        return AUTHENTICATED if partial is not None and partial.scope == "public" else partial

    def _source(self, scope: Scope, headers: dict[bytes, bytes]) -> str:
        client = scope.get("client")
        peer = client[0] if client else ""
        if not self._config.trusted_proxies or not self._trusted(peer):
            return peer
        # Repeated header lines are one comma-joined list (RFC 9110); proxies may each add their own line.
        lines = [v.decode("latin-1") for k, v in scope.get("headers", ()) if k == b"x-forwarded-for"]
        if not lines:
            return peer
        hops = [h.strip() for h in ",".join(lines).split(",") if h.strip()]
        for hop in reversed(hops):  # the right-most address no trusted proxy vouches for
            if not self._trusted(hop):
                return hop
        return hops[0] if hops else peer

    def _trusted(self, address: str) -> bool:
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        return any(ip in net for net in self._config.trusted_proxies)

    def _entry(
        self,
        request_id: str,
        principal: str,
        tenant: str | None,
        action: str,
        scope: Scope,
        outcome: str,
        status: int,
        source: str,
        **detail: Any,
    ) -> AuditEntry:
        return AuditEntry(
            at=self._now(),
            request_id=request_id,
            principal=principal,
            tenant=tenant,
            action=action,
            resource=scope["path"][:512],
            outcome=outcome,
            status=status,
            source=source,
            detail={"method": scope["method"], **detail},
        )

    async def _record_or_refuse(self, entry: AuditEntry) -> None:
        """Write a refusal's record; when it cannot be written, answer 503 instead (fail closed, like Vault)."""
        if not await self._record(entry):
            raise UnavailableError("the audit log cannot be written; try again")

    async def _record(self, entry: AuditEntry) -> bool:
        try:
            await self._audit.record([entry])
        except Exception as exc:
            log.error("could not write the audit record of %s: %s", entry.request_id, exc)
            return False
        return True

    # -------------------------------------------------------------------------------------- the gate

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Gate one request (see the module docstring)."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = new_request_id(self._now())
        extra_headers = [(b"x-request-id", request_id.encode()), *_SECURITY_HEADERS]
        if self._config.tls:
            extra_headers.append(_HSTS)

        async def send_plain(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), *extra_headers]}
            await send(message)

        raw_headers: list[tuple[bytes, bytes]] = scope.get("headers", [])
        if sum(len(k) + len(v) for k, v in raw_headers) > self._config.max_header_bytes:
            response = problem(
                431, "headers_too_large", "Request headers too large",
                f"request headers exceed {self._config.max_header_bytes} bytes",
            )  # fmt: skip
            await response(scope, receive, send_plain)
            return
        headers = dict(raw_headers)
        rule = self._rule(scope)
        if rule is not None and rule.scope == "public":
            await self.app(scope, receive, send_plain)
            return
        source = self._source(scope, headers)
        method = scope["method"]
        try:
            caller = await self._admit(scope, headers, rule, request_id, source)
        except TaskplaneError as exc:
            await error_response(exc)(scope, receive, send_plain)
            return
        scope.setdefault("state", {})["caller"] = caller
        mutating = method in MUTATING
        started = False

        async def send_audited(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                status = int(message["status"])
                needs_record = (mutating and not caller.audited) or caller.denied is not None
                if needs_record:
                    outcome = AuditOutcome.DENIED if caller.denied is not None else outcome_of(status)
                    detail = {"reason": caller.denied} if caller.denied is not None else {}
                    entry = self._entry(
                        request_id, caller.subject, caller.principal.home_tenant, _action(rule, method), scope,
                        outcome, status, source, **detail,
                    )  # fmt: skip
                    if not await self._record(entry) and mutating:
                        # Refuse: this request changed nothing (its change would have carried the record).
                        refusal = error_response(UnavailableError("the audit log cannot be written; try again"))
                        await refusal(scope, receive, send_plain)
                        raise _Refused
                message = {**message, "headers": [*message.get("headers", []), *extra_headers]}
            await send(message)

        try:
            await self.app(scope, receive, send_audited)
        except _Refused:
            return
        except Exception:
            # A bug below: answer the 500 here, so it is audited and carries the headers like any answer
            # (Starlette's own 500 handler sits outside this middleware).
            log.exception("unhandled error in %s %s (request %s)", method, scope["path"], request_id)
            if started:
                raise
            crash = problem(500, "internal", "Internal error", "an unexpected error occurred; see the server log")
            try:
                await crash(scope, receive, send_audited)
            except _Refused:
                return

    async def _admit(
        self, scope: Scope, headers: dict[bytes, bytes], rule: Rule | None, request_id: str, source: str
    ) -> Caller:
        """Authenticate and check the route's permission; raise the error to answer with (audited)."""
        method = scope["method"]
        if self._auth.insecure:
            principal = ANONYMOUS_ADMIN
        else:
            authorization = headers.get(b"authorization")
            try:
                principal = await self._auth.authenticate(
                    authorization.decode("latin-1") if authorization is not None else None, source
                )
            except RateLimitedError as exc:
                await self._note_throttle(source, request_id, scope, exc)
                raise
            except UnauthenticatedError as exc:
                key_id = exc.extra.get("key_id")
                await self._record_or_refuse(
                    self._entry(
                        request_id, f"key:{key_id}" if key_id else "anonymous", None, "auth.authenticate", scope,
                        AuditOutcome.UNAUTHENTICATED, 401, source, reason=exc.extra.get("reason", "invalid"),
                    )
                )  # fmt: skip
                exc.extra.pop("key_id", None)
                raise
        grants = await self._auth.grants(principal)
        caller = Caller(principal, grants, request_id, source)
        if self._tenant_limiter is not None and not any(b.tenant == ALL_TENANTS for b in principal.bindings):
            bucket = principal.home_tenant or principal.subject
            wait = self._tenant_limiter.take(bucket)
            if wait is not None:
                limited = RateLimitedError(f"too many requests for tenant {bucket}", retry_after=wait)
                await self._note_throttle(f"tenant:{bucket}", request_id, scope, limited, principal.subject)
                raise limited
        if rule is None or rule.verb is None or rule.resource is None:
            return caller  # authenticated routes, and unknown paths (404 from the router)
        if rule.scope == "platform":
            allowed = grants.allows(rule.verb, rule.resource, None)
        else:
            allowed = grants.holds_anywhere(rule.verb, rule.resource)
        if not allowed:
            where = "platform-wide" if rule.scope == "platform" else "in any tenant"
            await self._record_or_refuse(
                self._entry(
                    request_id, principal.subject, principal.home_tenant, _action(rule, method), scope,
                    AuditOutcome.DENIED, 403, source, verb=rule.verb, needs=rule.resource,
                )
            )  # fmt: skip
            raise ForbiddenError(
                f"none of your roles allows {rule.verb} {rule.resource} {where}",
                verb=rule.verb,
                resource=rule.resource,
            )
        return caller

    async def _note_throttle(
        self, key: str, request_id: str, scope: Scope, exc: RateLimitedError, principal: str = "anonymous"
    ) -> None:
        """One audit record per throttling spell of a key, not one per refused request (that would be a DoS)."""
        now = self._monotonic()
        if self._throttle_noted.get(key, -1.0) > now:
            return
        self._throttle_noted[key] = now + exc.retry_after
        if len(self._throttle_noted) > 100_000:
            self._throttle_noted.clear()
        source = key if not key.startswith("tenant:") else ""
        await self._record_or_refuse(
            self._entry(
                request_id, principal, None, "auth.throttle", scope, AuditOutcome.THROTTLED, 429, source,
                key=key, retry_after=exc.retry_after,
            )
        )  # fmt: skip


class _Refused(Exception):
    """Raised inside ``send`` to abandon a response that was replaced by a refusal."""


def _action(rule: Rule | None, method: str) -> str:
    if rule is None or rule.resource is None:
        return f"http.{method.lower()}"
    return f"{rule.resource}.{rule.verb}"
