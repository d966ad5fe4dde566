"""The caller of one request, and the object-level checks every service makes with it.

    HTTP edge: authenticate --> Caller(principal, grants, request id, source)
    service:   caller.check_object(...)   another tenant's object --> the same NotFoundError as a missing one
               caller.check_target(...)   acting in a tenant it holds no role in --> ForbiddenError (403)
               caller.visible(...)        which tenants a list may show
               caller.entry(...)          the audit entry its change commits with; caller.audited once written

The route table (``api/permissions.py``) has already checked that the caller holds the route's permission
*somewhere*; these checks decide *where*.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from taskplane.domain.access import BUILTIN_ROLES, SYSTEM_PRINCIPAL, Grants, Principal, compute_grants
from taskplane.domain.audit import AuditEntry, AuditOutcome
from taskplane.errors import ForbiddenError, NotFoundError


@dataclass(slots=True)
class Caller:
    """Who is asking, in one request. Mutable only in its audit bookkeeping."""

    principal: Principal
    grants: Grants
    request_id: str = ""
    source: str = ""
    audited: bool = False  # a record of this request was committed with its change
    denied: str | None = None  # why an object-level check refused (the response looks like a plain 404)
    detail: dict[str, Any] = field(default_factory=dict)  # extra audit detail the service adds (ids, counts)

    @classmethod
    def system(cls, request_id: str = "system") -> Caller:
        """The server itself (first-start bootstrap, tests): every permission everywhere."""
        return cls(SYSTEM_PRINCIPAL, compute_grants(SYSTEM_PRINCIPAL.bindings, BUILTIN_ROLES), request_id, "local")

    @property
    def subject(self) -> str:
        """The principal's subject, as audit records name it."""
        return self.principal.subject

    def allows(self, verb: str, resource: str, tenant: str | None) -> bool:
        """True when ``verb`` on ``resource`` is allowed in ``tenant`` (``None``: on the platform)."""
        return self.grants.allows(verb, resource, tenant)

    def check_object(self, verb: str, resource: str, tenant: str, missing: NotFoundError) -> None:
        """Raise ``missing`` (exactly what a missing object raises) unless allowed in the object's ``tenant``."""
        if not self.grants.allows(verb, resource, tenant):
            self.denied = f"{verb} {resource} in another tenant"
            raise missing

    def check_target(self, verb: str, resource: str, tenant: str) -> None:
        """Raise ``ForbiddenError`` unless ``verb`` on ``resource`` is allowed in ``tenant`` (a tenant it names)."""
        if not self.grants.allows(verb, resource, tenant):
            self.denied = f"{verb} {resource} in tenant {tenant}"
            raise ForbiddenError(f"not allowed to {verb} {resource} in tenant {tenant!r}", verb=verb, resource=resource)

    def check_platform(self, verb: str, resource: str) -> None:
        """Raise ``ForbiddenError`` unless ``verb`` on ``resource`` is allowed platform-wide."""
        if not self.grants.allows(verb, resource, None):
            self.denied = f"{verb} {resource} on the platform"
            raise ForbiddenError(f"not allowed to {verb} {resource} platform-wide", verb=verb, resource=resource)

    def visible(self, verb: str, resource: str) -> frozenset[str] | None:
        """The tenants whose ``resource`` a list may show; ``None`` means all of them."""
        return self.grants.tenants_for(verb, resource)

    def default_tenant(self, fallback: str) -> str:
        """The tenant to act in when a request names none: the caller's only tenant, else ``fallback``."""
        return self.principal.home_tenant or fallback

    def entry(self, now: datetime, action: str, resource: str, tenant: str | None, **detail: Any) -> AuditEntry:
        """The audit entry of a successful change made for this caller (written with the change)."""
        return AuditEntry(
            at=now,
            request_id=self.request_id,
            principal=self.subject,
            tenant=tenant,
            action=action,
            resource=resource,
            outcome=AuditOutcome.SUCCESS,
            source=self.source,
            detail={**self.detail, **detail},
        )
