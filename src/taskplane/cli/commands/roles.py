"""``roles list|get|create|delete`` and ``roles bind|unbind|bindings``: what roles allow, and who holds them where."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

import typer

from taskplane.cli import render, render_security
from taskplane.cli.context import JsonFlag, cli_context
from taskplane.cli.flags import parse_rule, validated
from taskplane.wire.security import BindingCreate, RoleCreate, RoleOut

app = typer.Typer(name="roles", help="Roles (verbs x resources) and the bindings that grant them in a tenant.")

_FLAG_OF_FIELD = {
    "name": "NAME",
    "rules": "--rule",
    "description": "--description",
    "subject": "--subject",
    "tenant": "--tenant",
    "role": "--role",
}

RoleName = Annotated[str, typer.Argument(metavar="NAME", help="Role name.")]


def _show(ctx: typer.Context, role: RoleOut, as_json: bool) -> None:
    if as_json or cli_context(ctx).json:
        render.emit_json(role)
    else:
        render.console().print(render_security.role_details(role, datetime.now(UTC)))


@app.command("list")
def list_roles(ctx: typer.Context, as_json: JsonFlag = False) -> None:
    """List built-in and custom roles with their rules (VERBS:RESOURCES)."""
    options = cli_context(ctx)
    with options.client() as tp:
        roles = tp.list_roles()
    if as_json or options.json:
        render.emit_json(roles)
    else:
        render.console().print(render_security.role_table(roles))


@app.command("get")
def get(ctx: typer.Context, name: RoleName, as_json: JsonFlag = False) -> None:
    """Show one role: one line per set of verbs and the resources they apply to."""
    with cli_context(ctx).client() as tp:
        _show(ctx, tp.get_role(name), as_json)


@app.command("create")
def create(
    ctx: typer.Context,
    name: RoleName,
    rule: Annotated[
        list[str], typer.Option("--rule", help="VERBS:RESOURCES, comma lists, '*' for all: get,list:tasks,logs.")
    ],
    description: Annotated[str, typer.Option(help="What the role is for.")] = "",
    as_json: JsonFlag = False,
) -> None:
    """Define a custom role: taskplane roles create reader --rule get,list:tasks,logs."""
    fields = {"name": name, "rules": [parse_rule(item) for item in rule], "description": description}
    body = validated(RoleCreate, fields, _FLAG_OF_FIELD)
    with cli_context(ctx).client() as tp:
        _show(ctx, tp.create_role(body.name, body.rules, body.description), as_json)


@app.command("delete")
def delete(ctx: typer.Context, name: RoleName) -> None:
    """Delete a custom role that no binding or live API key uses."""
    with cli_context(ctx).client() as tp:
        tp.delete_role(name)
    render.error(f"deleted role {name}")


@app.command("bind")
def bind(
    ctx: typer.Context,
    subject: Annotated[str, typer.Option(help="Who: key:<id> or oidc:<sub>.")],
    tenant: Annotated[str, typer.Option(help="Where: a tenant, or '*' for every tenant.")],
    role: Annotated[str, typer.Option(help="The role to grant.")],
    as_json: JsonFlag = False,
) -> None:
    """Grant a role in a tenant to a subject (you cannot grant more than you hold)."""
    body = validated(BindingCreate, {"subject": subject, "tenant": tenant, "role": role}, _FLAG_OF_FIELD)
    options = cli_context(ctx)
    with options.client() as tp:
        binding = tp.bind_role(body.subject, body.tenant, body.role)
    if as_json or options.json:
        render.emit_json(binding)
    else:
        where = "every tenant" if binding.tenant == "*" else f"tenant {binding.tenant}"
        typer.echo(f"{binding.id} {binding.subject} holds {binding.role} in {where}")


@app.command("unbind")
def unbind(
    ctx: typer.Context, binding_id: Annotated[str, typer.Argument(metavar="BINDING_ID", help="From 'roles bindings'.")]
) -> None:
    """Remove a role binding."""
    with cli_context(ctx).client() as tp:
        tp.unbind_role(binding_id)
    render.error(f"removed binding {binding_id}")


@app.command("bindings")
def bindings(
    ctx: typer.Context,
    subject: Annotated[str | None, typer.Option(help="Only this subject's (key:<id>, oidc:<sub>).")] = None,
    as_json: JsonFlag = False,
) -> None:
    """List role bindings you may see, oldest first."""
    options = cli_context(ctx)
    with options.client() as tp:
        items = tp.list_bindings(subject)
    if as_json or options.json:
        render.emit_json(items)
    elif items:
        render.console().print(render_security.binding_table(items, datetime.now(UTC)))
    else:
        render.error("no role bindings")
