"""The security API as data: API keys, roles, role bindings, the caller's identity and the audit log.

Same shape as ``calls``: each function returns a ``Call`` that the clients send. The audit export is a streamed
response (``stream=True``): the clients read it line by line and ``decode_audit_line`` turns each JSON line into
an ``AuditRecordOut`` (``decode_audit_lines`` reads a whole export, from a response or a file). No I/O happens in
this module.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from datetime import datetime
from typing import Any

from pydantic import ValidationError

from taskplane.errors import InternalError
from taskplane.sdk.calls import Call, coerce, decode_empty, decode_model, named_path, rfc3339
from taskplane.sdk.problems import raise_for_problem
from taskplane.wire.security import (
    AuditHead,
    AuditPage,
    AuditRecordOut,
    BindingCreate,
    BindingList,
    BindingOut,
    RoleCreate,
    RoleList,
    RoleOut,
    RuleIn,
    TokenCreate,
    TokenCreated,
    TokenList,
    TokenOut,
    WhoAmI,
)

TOKENS = "/platform/admin/tokens"
ROLES = "/platform/admin/roles"
BINDINGS = "/platform/admin/rolebindings"
AUDIT = "/platform/audit"

RuleInput = RuleIn | Mapping[str, Any]


def whoami() -> Call[WhoAmI]:
    """``GET /platform/whoami``: the caller as the server sees it."""
    return Call("GET", "/platform/whoami", decode_model(WhoAmI))


# -- API keys -------------------------------------------------------------------------------------------------


def token_request(
    owner: str,
    roles: Iterable[str],
    tenant: str | None = None,
    expires_in: int | None = None,
    description: str = "",
) -> TokenCreate:
    """The ``TokenCreate`` of these arguments, validated before anything is sent."""
    fields: dict[str, Any] = {"owner": owner, "roles": list(roles), "description": description}
    if tenant is not None:
        fields["tenant"] = tenant
    if expires_in is not None:
        fields["expires_in"] = expires_in
    return coerce(TokenCreate, fields, "token")


def create_token(request: TokenCreate) -> Call[TokenCreated]:
    """``POST /platform/admin/tokens`` (201): the new key with its secret, shown this once."""
    body = request.model_dump_json(exclude_unset=True).encode()
    return Call("POST", TOKENS, decode_model(TokenCreated), body=body)


def list_tokens() -> Call[TokenList]:
    """``GET /platform/admin/tokens``, oldest first; never a secret."""
    return Call("GET", TOKENS, decode_model(TokenList))


def get_token(token_id: str) -> Call[TokenOut]:
    """``GET /platform/admin/tokens/{id}``."""
    return Call("GET", named_path(TOKENS, token_id, "token id"), decode_model(TokenOut))


def revoke_token(token_id: str) -> Call[TokenOut]:
    """``DELETE /platform/admin/tokens/{id}``: the key, now ``revoked`` (idempotent)."""
    return Call("DELETE", named_path(TOKENS, token_id, "token id"), decode_model(TokenOut))


# -- roles and bindings ---------------------------------------------------------------------------------------


def role_request(name: str, rules: Iterable[RuleInput], description: str = "") -> RoleCreate:
    """The ``RoleCreate`` of these arguments; each rule is a ``RuleIn`` or a mapping of ``verbs`` and ``resources``."""
    given = [rule.model_dump() if isinstance(rule, RuleIn) else dict(rule) for rule in rules]
    return coerce(RoleCreate, {"name": name, "rules": given, "description": description}, "role")


def create_role(request: RoleCreate) -> Call[RoleOut]:
    """``POST /platform/admin/roles`` (201; 409 when the name is taken)."""
    body = request.model_dump_json(exclude_unset=True).encode()
    return Call("POST", ROLES, decode_model(RoleOut), body=body)


def list_roles() -> Call[RoleList]:
    """``GET /platform/admin/roles``: built-in roles first."""
    return Call("GET", ROLES, decode_model(RoleList))


def get_role(name: str) -> Call[RoleOut]:
    """``GET /platform/admin/roles/{name}``."""
    return Call("GET", named_path(ROLES, name, "role name"), decode_model(RoleOut))


def delete_role(name: str) -> Call[None]:
    """``DELETE /platform/admin/roles/{name}`` (204; 409 ``role_in_use``; built-in roles cannot be deleted)."""
    return Call("DELETE", named_path(ROLES, name, "role name"), decode_empty)


def create_binding(request: BindingCreate) -> Call[BindingOut]:
    """``POST /platform/admin/rolebindings`` (201): grant a role in a tenant to a subject."""
    body = request.model_dump_json(exclude_unset=True).encode()
    return Call("POST", BINDINGS, decode_model(BindingOut), body=body)


def list_bindings(subject: str | None = None) -> Call[BindingList]:
    """``GET /platform/admin/rolebindings``, optionally of one subject."""
    params = (("subject", subject),) if subject is not None else ()
    return Call("GET", BINDINGS, decode_model(BindingList), params=params)


def delete_binding(binding_id: str) -> Call[None]:
    """``DELETE /platform/admin/rolebindings/{id}`` (204)."""
    return Call("DELETE", named_path(BINDINGS, binding_id, "binding id"), decode_empty)


# -- audit ----------------------------------------------------------------------------------------------------


def audit_filters(
    tenant: str | None = None,
    principal: str | None = None,
    action: str | None = None,
    outcome: str | None = None,
    request_id: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
) -> tuple[tuple[str, str], ...]:
    """Query parameters selecting audit records; every filter given must match."""
    text = (("tenant", tenant), ("principal", principal), ("action", action), ("outcome", outcome))
    params = [(key, value) for key, value in (*text, ("request_id", request_id)) if value is not None]
    if since is not None:
        params.append(("since", rfc3339(since, field="since")))
    if until is not None:
        params.append(("until", rfc3339(until, field="until")))
    return tuple(params)


def list_audit(filters: tuple[tuple[str, str], ...], after: str | None = None, limit: int = 100) -> Call[AuditPage]:
    """``GET /platform/audit``: one page, oldest first; ``next_cursor`` goes back as ``after``."""
    params = (*filters, ("limit", str(limit)))
    if after is not None:
        params = (*params, ("after", after))
    return Call("GET", AUDIT, decode_model(AuditPage), params=params)


def export_audit(since: datetime | None = None) -> Call[None]:
    """``GET /platform/audit/export``: JSON lines, oldest first, streamed (``decode`` only checks the status)."""
    params = (("since", rfc3339(since, field="since")),) if since is not None else ()
    headers = (("Accept", "application/x-ndjson, application/json"),)
    return Call("GET", f"{AUDIT}/export", raise_for_problem, params=params, headers=headers, stream=True)


def decode_audit_line(line: str | bytes, number: int) -> AuditRecordOut:
    """One line of an export as a record; ``number`` (from 1) names the line when it is not one."""
    try:
        return AuditRecordOut.model_validate_json(line)
    except ValidationError as exc:
        raise InternalError(
            f"line {number} of the audit export is not an audit record ({exc.error_count()} invalid fields)"
        ) from exc


def decode_audit_lines(lines: Iterable[str | bytes]) -> Iterator[AuditRecordOut]:
    """The records of an export's JSON lines, blank lines skipped."""
    for number, line in enumerate(lines, start=1):
        if line.strip():
            yield decode_audit_line(line, number)


def audit_head() -> Call[AuditHead]:
    """``GET /platform/audit/head``: the chain's last ``(seq, hash)``."""
    return Call("GET", f"{AUDIT}/head", decode_model(AuditHead))
