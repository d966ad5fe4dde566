"""Wire models for API keys, roles, role bindings, the caller's identity and the audit log.

A new key's ``token`` appears once, in the response that creates it; no other response carries a secret.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, StrictInt, StrictStr

from taskplane.wire.base import InModel

_OUT = ConfigDict(extra="ignore", frozen=True)

_NAME = r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$"
_TENANT_OR_ALL = r"^(\*|[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)$"


class TokenCreate(InModel):
    """A new API key: for whom, in which tenant (``"*"``: platform-wide), with which roles, until when."""

    owner: StrictStr = Field(
        min_length=1, max_length=128, pattern=r"^[^\x00-\x1f\x7f]+$", description="who uses it (a person or a service)"
    )
    tenant: StrictStr | None = Field(
        default=None, pattern=_TENANT_OR_ALL, description="default: the caller's only tenant"
    )
    roles: list[StrictStr] = Field(min_length=1, max_length=16)
    expires_in: StrictInt | None = Field(default=None, ge=60, le=10 * 365 * 86400, description="seconds")
    expires_at: AwareDatetime | None = None
    description: StrictStr = Field(default="", max_length=512)


class TokenOut(BaseModel):
    """An API key as listed: never its secret."""

    model_config = _OUT

    id: str
    owner: str
    tenant: str
    roles: list[str]
    created_at: datetime
    created_by: str
    expires_at: datetime | None
    revoked_at: datetime | None
    last_used_at: datetime | None
    description: str
    state: str = Field(description="active, expired or revoked")


class TokenCreated(TokenOut):
    """A new key, with its token: shown this once, stored only as a keyed hash."""

    token: str


class TokenList(BaseModel):
    """API keys, oldest first."""

    model_config = _OUT

    items: list[TokenOut]


class RuleIn(InModel):
    """Verbs x resources; ``"*"`` for all of either."""

    verbs: list[StrictStr] = Field(min_length=1, max_length=16)
    resources: list[StrictStr] = Field(min_length=1, max_length=32)


class RoleCreate(InModel):
    """A custom role."""

    name: StrictStr = Field(pattern=_NAME)
    rules: list[RuleIn] = Field(min_length=1, max_length=64)
    description: StrictStr = Field(default="", max_length=512)


class RuleOut(BaseModel):
    """One (verb, resource) pair of a role."""

    model_config = _OUT

    verb: str
    resource: str


class RoleOut(BaseModel):
    """A role: built-in or custom."""

    model_config = _OUT

    name: str
    builtin: bool
    description: str
    rules: list[RuleOut]
    created_at: datetime | None = None
    created_by: str | None = None


class RoleList(BaseModel):
    """Every role, built-in ones first."""

    model_config = _OUT

    items: list[RoleOut]


class BindingCreate(InModel):
    """Grant ``role`` in ``tenant`` to a principal ``subject`` (``oidc:<sub>`` or ``key:<id>``)."""

    subject: StrictStr = Field(min_length=3, max_length=256, pattern=r"^(oidc|key):[^\s\x00-\x1f\x7f]+$")
    tenant: StrictStr = Field(pattern=_TENANT_OR_ALL)
    role: StrictStr = Field(min_length=1, max_length=63)


class BindingOut(BaseModel):
    """A stored role binding."""

    model_config = _OUT

    id: str
    subject: str
    tenant: str
    role: str
    created_at: datetime
    created_by: str


class BindingList(BaseModel):
    """Role bindings, oldest first."""

    model_config = _OUT

    items: list[BindingOut]


class BindingRef(BaseModel):
    """A (tenant, role) pair a principal holds."""

    model_config = _OUT

    tenant: str
    role: str


class WhoAmI(BaseModel):
    """The caller, as the server sees it."""

    model_config = _OUT

    subject: str
    kind: str
    name: str
    bindings: list[BindingRef]


class AuditRecordOut(BaseModel):
    """One audit record with its place in the hash chain."""

    model_config = _OUT

    seq: int
    at: datetime
    request_id: str
    principal: str
    tenant: str | None
    action: str
    resource: str
    outcome: str
    status: int | None
    source: str
    detail: dict[str, Any]
    prev_hash: str
    hash: str


class AuditPage(BaseModel):
    """A page of audit records, oldest first; pass ``next_cursor`` as ``after`` for the next one."""

    model_config = _OUT

    items: list[AuditRecordOut]
    next_cursor: str | None


class AuditHead(BaseModel):
    """The chain's last ``(seq, hash)``: copy it somewhere safe as an external checkpoint."""

    model_config = _OUT

    seq: int
    hash: str
