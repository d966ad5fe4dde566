"""Two tenants seeded with canary strings, the callers of the RBAC matrix, and fresh objects on demand.

    admin API --> tenants ta, tb --> in each: a task (name, labels, env, command, log file), a reservation,
                                     an API key (owner, description), a role binding (subject),
                                     every string carrying the tenant's canary ("canary-ta-...")
              --> a platform-wide key and binding (tenant "*"), a custom role
              --> callers: anonymous, malformed, unknown key, wrong secret, expired key, revoked key,
                           each built-in tenant role as a key bound in ta and in tb, the platform-admin key

Every request sent through ``World.client`` is kept as an ``Exchange``: the audit checks hold each one to
its record. A string a caller writes into a tenant carries that tenant's canary only when the caller belongs
there (or is the platform admin); a probe into the other tenant says "probe", so a canary found in a
response always came from the server, never from the request that caused it.
"""

from __future__ import annotations

import asyncio
import itertools
import secrets
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx

from taskplane.domain.access import ALL_TENANTS, Binding
from taskplane.services.ids import new_binding_id, new_reservation_id, new_task_id
from taskplane.services.ports import LogStream
from tests.security.conftest import Secured, secured_platform

TENANTS = ("ta", "tb")
TENANT_ROLES = ("viewer", "submitter", "operator", "tenant-admin")
NOWHERE = "nowhere"  # a tenant that never exists
# The matrix is about who may do what, not about the lockout after ten failed logins from one address.
SETTINGS: dict[str, Any] = {"auth_failure_limit": 100_000}


def other(tenant: str) -> str:
    """The other one of the two tenants."""
    return TENANTS[1 - TENANTS.index(tenant)]


# ------------------------------------------------------------------------------------------- bodies


def task_body(tenant: str | None, tag: str, serial: int) -> dict[str, Any]:
    """A small long-running task whose every free-text field carries ``tag``."""
    return {
        "tenant": tenant,
        "name": f"{tag}-task-{serial}",
        "command": ["echo", tag],
        "labels": {"note": tag},
        "env": {"NOTE": tag},
        "resources": {"cpu": "10m", "memory": "1Mi"},
        "simulated_duration": 3600,
    }


def batch_body(tenant: str | None, tag: str, serial: int) -> dict[str, Any]:
    """A batch of one task."""
    return {"tasks": [task_body(tenant, tag, serial)]}


def reservation_body(tenant: str | None, tag: str, serial: int) -> dict[str, Any]:
    """A tiny reservation (it has no free text: its id is the server's)."""
    return {"tenant": tenant, "resources": {"cpu": "10m"}, "ttl": "1h"}


def token_body(tenant: str | None, tag: str, serial: int) -> dict[str, Any]:
    """A viewer key whose owner and description carry ``tag``."""
    return {"owner": f"{tag}-owner-{serial}", "tenant": tenant, "roles": ["viewer"], "description": f"{tag} key"}


def binding_body(tenant: str | None, tag: str, serial: int) -> dict[str, Any]:
    """A viewer binding of an OIDC subject named after ``tag``."""
    return {"subject": f"oidc:{tag}-subject-{serial}", "tenant": tenant, "role": "viewer"}


def tenant_body(tenant: str | None, tag: str, serial: int) -> dict[str, Any]:
    """A new, empty tenant."""
    return {"name": f"fresh-{serial}"}


def role_body(tenant: str | None, tag: str, serial: int) -> dict[str, Any]:
    """A new custom role that reads capacity."""
    return {"name": f"fresh-role-{serial}", "rules": [{"verbs": ["get"], "resources": ["capacity"]}]}


Body = Callable[[str | None, str, int], dict[str, Any]]

# How the platform admin makes an object of each kind: (create path, body, the field naming the result).
MAKERS: dict[str, tuple[str, Body, str]] = {
    "task": ("/platform/tasks", task_body, "id"),
    "reservation": ("/platform/resources/reserve", reservation_body, "id"),
    "token": ("/platform/admin/tokens", token_body, "id"),
    "binding": ("/platform/admin/rolebindings", binding_body, "id"),
    "tenant": ("/platform/admin/tenants", tenant_body, "name"),
    "role": ("/platform/admin/roles", role_body, "name"),
}


def missing_id(kind: str) -> str:
    """An id of ``kind``'s own format that names nothing."""
    now = datetime.now(UTC)
    return {
        "task": lambda: new_task_id(now),
        "reservation": lambda: new_reservation_id(now),
        "token": lambda: secrets.token_hex(8),
        "binding": lambda: new_binding_id(now),
        "tenant": lambda: f"gone-{secrets.token_hex(4)}",
        "role": lambda: f"gone-{secrets.token_hex(4)}",
    }[kind]()


# ------------------------------------------------------------------------------------------ callers


@dataclass(frozen=True, slots=True)
class Who:
    """A caller of the matrix: its credential, and the bindings it was given."""

    name: str
    token: str | None
    bindings: tuple[Binding, ...] = ()
    authenticates: bool = True

    @property
    def tenant(self) -> str | None:
        """The one tenant it is bound in (``None``: none, several, or every tenant)."""
        tenants = {b.tenant for b in self.bindings}
        if len(tenants) != 1 or ALL_TENANTS in tenants:
            return None
        return next(iter(tenants))


@dataclass(frozen=True, slots=True)
class Exchange:
    """One request a test sent, as the audit log should know it."""

    who: str
    method: str
    path: str
    status: int
    request_id: str | None


# -------------------------------------------------------------------------------------------- world


@dataclass
class World:
    """A secured platform with two seeded tenants and the matrix's callers."""

    secured: Secured
    canary: dict[str, str] = field(default_factory=lambda: {t: f"canary-{t}-{secrets.token_hex(6)}" for t in TENANTS})
    seeded: dict[tuple[str, str | None], str] = field(default_factory=dict)  # (kind, tenant) -> id
    made: dict[str, dict[str, Any]] = field(default_factory=dict)  # id -> the object as created
    callers: list[Who] = field(default_factory=list)
    exchanges: list[Exchange] = field(default_factory=list)
    _serials: itertools.count[int] = field(default_factory=lambda: itertools.count(1))
    _clients: dict[str, httpx.AsyncClient] = field(default_factory=dict)

    @property
    def admin_who(self) -> Who:
        """The platform administrator (the first-start key)."""
        return Who("platform-admin", self.secured.admin_token, (Binding(ALL_TENANTS, "platform-admin"),))

    def who(self, name: str) -> Who:
        """The caller called ``name`` (e.g. ``operator@ta``)."""
        return next(w for w in self.callers if w.name == name)

    def serial(self) -> int:
        """A number not used before in this world."""
        return next(self._serials)

    def tag(self, who: Who, tenant: str | None) -> str:
        """What ``who`` writes into ``tenant``: its canary when ``who`` belongs there, else ``probe``."""
        if tenant in self.canary and who.authenticates and who.tenant in (None, tenant):
            return self.canary[tenant]
        return "probe"

    def client(self, who: Who) -> httpx.AsyncClient:
        """``who``'s client (one per caller); every response it gets is kept as an ``Exchange``."""
        if who.name not in self._clients:
            client = self.secured.client(who.token)

            async def keep(response: httpx.Response) -> None:
                request = response.request
                self.exchanges.append(
                    Exchange(
                        who.name,
                        request.method,
                        request.url.path,
                        response.status_code,
                        response.headers.get("x-request-id"),
                    )
                )

            client.event_hooks = {"request": [], "response": [keep]}
            self._clients[who.name] = client
        return self._clients[who.name]

    def admin(self) -> httpx.AsyncClient:
        """The platform administrator's client."""
        return self.client(self.admin_who)

    async def fresh(self, kind: str, tenant: str | None) -> tuple[str, str | None]:
        """A new object of ``kind`` in ``tenant``, made by the admin: its id and the tenant it belongs to."""
        path, body, id_field = MAKERS[kind]
        tag = self.canary.get(tenant or "", "platform")
        response = await self.admin().post(path, json=body(tenant, tag, self.serial()))
        assert response.status_code == 201, f"could not make a {kind} in {tenant}: {response.text}"
        made: str = response.json()[id_field]
        self.made[made] = response.json()
        return made, made if kind == "tenant" else tenant

    async def until_running(self, task_id: str) -> None:
        """Wait (a few seconds at most) until the engine has started ``task_id``."""
        for _ in range(250):
            task = await self.admin().get(f"/platform/tasks/{task_id}")
            if task.json()["state"] == "running":
                return
            await asyncio.sleep(0.02)
        raise AssertionError(f"task {task_id} did not start: {task.text}")

    async def close(self) -> None:
        """Close every client."""
        for client in self._clients.values():
            await client.aclose()

    # ------------------------------------------------------------------------------------ seeding

    async def seed(self) -> None:
        """Tenants, their canary-carrying objects, a custom role, log files, and every caller."""
        admin = self.admin()
        for tenant in TENANTS:
            created = await admin.post("/platform/admin/tenants", json={"name": tenant})
            assert created.status_code == 201, created.text
        for tenant in TENANTS:
            self.seeded[("tenant", tenant)] = tenant
            for kind in ("task", "reservation", "token", "binding"):
                self.seeded[(kind, tenant)], _ = await self.fresh(kind, tenant)
        for kind in ("token", "binding"):
            self.seeded[(kind, ALL_TENANTS)], _ = await self.fresh(kind, ALL_TENANTS)
        self.seeded[("role", None)], _ = await self.fresh("role", None)
        self._give_the_executor_logs()
        for tenant in TENANTS:
            for role in TENANT_ROLES:
                token = await self._key(f"{role}@{tenant}", tenant, role)
                self.callers.append(Who(f"{role}@{tenant}", token, (Binding(tenant, role),)))
        self.callers.append(self.admin_who)
        self.callers.extend(await self._bad_callers())

    async def _key(self, owner: str, tenant: str, role: str) -> str:
        created = await self.admin().post(
            "/platform/admin/tokens", json={"owner": owner, "tenant": tenant, "roles": [role]}
        )
        assert created.status_code == 201, created.text
        token: str = created.json()["token"]
        return token

    async def _bad_callers(self) -> list[Who]:
        viewer = self.who("viewer@ta").token
        assert viewer is not None
        key_id = viewer.split("_")[1]
        revoked = await self._key("revoked", "ta", "tenant-admin")
        gone = await self.admin().delete(f"/platform/admin/tokens/{revoked.split('_')[1]}")
        assert gone.status_code == 200, gone.text
        return [
            Who("anonymous", None, authenticates=False),
            Who("malformed", "not-a-taskplane-key", authenticates=False),
            Who("unknown-key", f"tpk_{secrets.token_hex(8)}_{secrets.token_urlsafe(32)}", authenticates=False),
            Who("wrong-secret", f"tpk_{key_id}_{secrets.token_urlsafe(32)}", authenticates=False),
            Who("expired", await self._expired_key(), authenticates=False),
            Who("revoked", revoked, authenticates=False),
        ]

    async def _expired_key(self) -> str:
        """A tenant-admin key of ta that expired a minute ago, stored directly: the API refuses a past expiry."""
        platform = self.secured.platform
        minted = platform.auth.mint(
            owner="expired",
            tenant="ta",
            roles=("tenant-admin",),
            created_by="test",
            expires_at=platform.clock.now() - timedelta(minutes=1),
        )
        await platform.store.create_api_key(minted.key)  # type: ignore[attr-defined]
        return minted.token

    def _give_the_executor_logs(self) -> None:
        """The simulated executor keeps no logs (the logs route answers 404 to everyone): give it files.

        Each seeded task's attempt 1 gets a log naming its tenant's canary, so a log read across tenants leaks it.
        """
        logs = Path(self.secured.settings.data_dir) / "matrix-logs"
        logs.mkdir(parents=True, exist_ok=True)

        def log_path(task_id: str, attempt: int, stream: LogStream) -> Path:
            return logs / f"{task_id}.{attempt}.{stream.value}"

        self.secured.platform.executor.log_path = log_path  # type: ignore[attr-defined]
        for tenant in TENANTS:
            task_id = self.seeded[("task", tenant)]
            for stream in LogStream:
                log_path(task_id, 1, stream).write_text(f"{self.canary[tenant]} wrote this to {stream.value}\n")


@asynccontextmanager
async def seeded_world(data_dir: Path) -> AsyncIterator[World]:
    """A started secured platform in ``data_dir`` with both tenants seeded; stopped afterwards."""
    async with secured_platform(data_dir, **SETTINGS) as secured:
        world = World(secured)
        try:
            await world.seed()
            yield world
        finally:
            await world.close()


async def audit_records(client: httpx.AsyncClient, **filters: str) -> list[dict[str, Any]]:
    """Every audit record ``client`` may read, oldest first, page by page (1,000 at a time)."""
    records: list[dict[str, Any]] = []
    after: str | None = None
    while True:
        params = {**filters, "limit": "1000", **({"after": after} if after is not None else {})}
        page = await client.get("/platform/audit", params=params)
        assert page.status_code == 200, page.text
        body = page.json()
        records.extend(body["items"])
        after = body["next_cursor"]
        if after is None:
            return records
