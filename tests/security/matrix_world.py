"""Two tenants seeded with canary strings, the callers of the RBAC matrix, and fresh objects on demand.

    admin API --> tenants ta, tb --> in each: a task (name, labels, env, command, log file), a reservation,
                                     an API key (owner, description), a role binding (subject),
                                     a state key "seed/<tenant>/config" that exists in that tenant only,
                                     a key "shared/config" (the same name in both tenants),
                                     a lease holding a key "held/<canary>/<n>",
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
import contextlib
import itertools
import secrets
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

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


def state_value(tenant: str | None, tag: str, serial: int) -> dict[str, Any]:
    """A state key's value (the raw JSON body of a PUT) carrying ``tag``."""
    return {"note": tag, "serial": serial}


def seed_key(tenant: str) -> str:
    """The name of the key seeded in ``tenant`` alone (no canary: names are sent by probes of the other tenant)."""
    return f"seed/{tenant}/config"


def made_key(tenant: str, key: str) -> str:
    """Where ``World.made`` keeps the answer to the PUT that made ``key`` in ``tenant``."""
    return f"key:{tenant}:{key}"


SHARED_KEY = "shared/config"  # seeded in both tenants, each with its own canary


def txn_body(tenant: str | None, tag: str, serial: int) -> dict[str, Any]:
    """A transaction that writes a key carrying ``tag`` and reads every seeded key name of both tenants."""
    reads = [{"op": "get", "key": key} for key in (*(seed_key(t) for t in TENANTS), SHARED_KEY)]
    return {
        "compare": [{"key": seed_key(TENANTS[1]), "target": "exists", "op": "equal", "value": True}],
        "success": [{"op": "put", "key": f"txn/{serial}", "value": {"note": tag}}, *reads],
        "failure": [{"op": "put", "key": f"txn/{serial}", "value": {"note": tag}}, *reads],
    }


def lease_body(tenant: str | None, tag: str, serial: int) -> dict[str, Any]:
    """An hour's lease (it has no free text: its id is the server's)."""
    return {"ttl": 3600}


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
        "key": lambda: f"gone/{secrets.token_hex(6)}",
        "lease": lambda: str(10**12 + secrets.randbelow(10**12)),
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


@dataclass(frozen=True, slots=True)
class Streamed:
    """The start of a streamed answer (a watch): what arrived before the stream went quiet, then closed."""

    status: int
    headers: httpx.Headers
    text: str


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

    async def stream(
        self, who: Who, path: str, params: dict[str, str], *, quiet: float = 0.3, most: float = 5.0
    ) -> Streamed:
        """GET ``path`` as ``who`` straight through the ASGI app, read until nothing more arrives for ``quiet``
        seconds (``most`` at most), then disconnect: httpx's ASGI transport would wait for an endless stream.
        """
        headers = [(b"host", b"tp.test")]
        if who.token is not None:
            headers.append((b"authorization", f"Bearer {who.token}".encode()))
        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": "GET",
            "scheme": "http",
            "path": path,
            "raw_path": path.encode(),
            "query_string": urlencode(params).encode(),
            "root_path": "",
            "headers": headers,
            "client": ("127.0.0.1", 40000),
            "server": ("tp.test", 80),
        }
        messages: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        gone = asyncio.Event()
        asked = False

        async def receive() -> dict[str, Any]:
            nonlocal asked
            if not asked:
                asked = True
                return {"type": "http.request", "body": b"", "more_body": False}
            await gone.wait()
            return {"type": "http.disconnect"}

        async def send(message: dict[str, Any]) -> None:
            await messages.put(message)

        app = asyncio.get_running_loop().create_task(self.secured.app(scope, receive, send))
        try:
            start = await asyncio.wait_for(messages.get(), most)
            assert start["type"] == "http.response.start", start
            answer = httpx.Headers([(k.decode(), v.decode()) for k, v in start["headers"]])
            body = bytearray()
            deadline = asyncio.get_running_loop().time() + most
            while (left := deadline - asyncio.get_running_loop().time()) > 0:
                try:
                    message = await asyncio.wait_for(messages.get(), min(quiet, left))
                except TimeoutError:
                    break
                body += message.get("body", b"")
                if not message.get("more_body", False):
                    break
        finally:
            gone.set()
            with contextlib.suppress(TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(app, 2)
        status = int(start["status"])
        self.exchanges.append(Exchange(who.name, "GET", path, status, answer.get("x-request-id")))
        return Streamed(status, answer, body.decode())

    async def fresh(self, kind: str, tenant: str | None) -> tuple[str, str | None]:
        """A new object of ``kind`` in ``tenant``, made by the admin: its id and the tenant it belongs to."""
        if kind == "key":
            assert tenant is not None
            return await self.put_key(tenant, f"fresh/{self.serial()}"), tenant
        if kind == "lease":
            assert tenant is not None
            return await self._lease(tenant), tenant
        path, body, id_field = MAKERS[kind]
        tag = self.canary.get(tenant or "", "platform")
        response = await self.admin().post(path, json=body(tenant, tag, self.serial()))
        assert response.status_code == 201, f"could not make a {kind} in {tenant}: {response.text}"
        made: str = response.json()[id_field]
        self.made[made] = response.json()
        return made, made if kind == "tenant" else tenant

    async def put_key(self, tenant: str, key: str, **params: str) -> str:
        """Write ``key`` in ``tenant`` (as the admin), its value carrying the tenant's canary; the key."""
        value = state_value(tenant, self.canary[tenant], self.serial())
        response = await self.admin().put(f"/platform/state/{key}", json=value, params={"tenant": tenant, **params})
        assert response.status_code == 200, f"could not put {key} in {tenant}: {response.text}"
        self.made[made_key(tenant, key)] = response.json()
        return key

    async def _lease(self, tenant: str) -> str:
        """A lease of an hour in ``tenant`` holding one key whose name carries the tenant's canary."""
        granted = await self.admin().post("/platform/leases", json=lease_body(tenant, "", 0), params={"tenant": tenant})
        assert granted.status_code == 201, f"could not grant a lease in {tenant}: {granted.text}"
        lease = str(granted.json()["id"])
        held = await self.put_key(tenant, f"held/{self.canary[tenant]}/{self.serial()}", lease=lease)
        self.made[lease] = {**granted.json(), "keys": [held]}
        return lease

    async def key_in(self, tenant: str, key: str) -> dict[str, Any] | None:
        """``key`` as it is now in ``tenant`` (read by the admin), or ``None``."""
        found = await self.admin().get(f"/platform/state/{key}", params={"tenant": tenant})
        assert found.status_code in (200, 404), found.text
        return found.json() if found.status_code == 200 else None

    async def lease_in(self, tenant: str, lease: str) -> dict[str, Any] | None:
        """Lease ``lease`` as it is now in ``tenant`` (read by the admin), or ``None``."""
        found = await self.admin().get(f"/platform/leases/{lease}", params={"tenant": tenant})
        assert found.status_code in (200, 404), found.text
        return found.json() if found.status_code == 200 else None

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
            self.seeded[("key", tenant)] = await self.put_key(tenant, seed_key(tenant))
            await self.put_key(tenant, SHARED_KEY)
            self.seeded[("lease", tenant)], _ = await self.fresh("lease", tenant)
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
