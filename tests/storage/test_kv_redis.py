"""The ``KVStore`` contract (``kv_contract``) on ``RedisKVStore``: standalone Redis and a Redis Cluster of our own.

Standalone: ``TASKPLANE_TEST_REDIS_URL`` (default ``redis://127.0.0.1:6379/0``); every test uses a key prefix of
its own and deletes its keys afterwards (the database is never flushed). Cluster: three ``redis-server
--cluster-enabled yes`` masters on free loopback ports in a temp dir, joined with ``redis-cli --cluster create``,
started once per module and stopped afterwards; skipped when the binaries are missing.

Skipped contract tests (revisions are per tenant on Redis, see docs/state-redis.md):

- ``test_reads_at_a_past_revision_see_the_state_then`` expects a put of tenant ``b`` to move tenant ``a`` to
  revision 5 (store-wide revisions). ``test_past_reads_count_in_the_tenants_own_revisions`` below is the same
  test with per-tenant revisions.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Iterator

import pytest
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster

from taskplane.domain.audit import AuditEntry
from taskplane.domain.state import KeyValue, Op, OpKind, Txn
from taskplane.errors import InvalidRequestError, NotFoundError
from taskplane.storage.redis import RedisKVStore
from tests.storage import test_kv_bank, test_kv_linearizable
from tests.storage.conftest import entry
from tests.storage.kv_contract import *  # noqa: F403 - the contract's tests run here
from tests.storage.kv_contract import LIMITS, NOW, keys_of, put
from tests.support.linearizability import HistoryRecorder, check
from tests.support.services import require_service

REDIS_URL = os.environ.get("TASKPLANE_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


def _free_port() -> int:
    """A free loopback port whose cluster bus port (``port + 10000``) is free too."""
    for _ in range(200):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port + 10000 > 65535:
            continue
        with socket.socket() as bus:
            try:
                bus.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
        return port
    raise RuntimeError("no free port pair for a Redis Cluster node")


def _wait_port(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"redis-server on port {port} did not start")


@pytest.fixture(scope="module")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[int]]:
    """Three cluster-enabled masters on loopback (no replicas); their ports."""
    server, cli = shutil.which("redis-server"), shutil.which("redis-cli")
    if server is None or cli is None:
        require_service("redis-cluster", "redis-server/redis-cli not installed")
    assert server is not None and cli is not None
    base = tmp_path_factory.mktemp("redis-cluster")
    ports: list[int] = []
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for _ in range(3):
            port = _free_port()
            ports.append(port)
            workdir = base / str(port)
            workdir.mkdir()
            procs.append(
                subprocess.Popen(
                    [
                        server,
                        "--port",
                        str(port),
                        "--bind",
                        "127.0.0.1",
                        "--cluster-enabled",
                        "yes",
                        "--cluster-config-file",
                        f"nodes-{port}.conf",
                        "--save",
                        "",
                        "--appendonly",
                        "no",
                        "--dir",
                        str(workdir),
                    ],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
        for port in ports:
            _wait_port(port)
        subprocess.run(
            [
                cli,
                "--cluster",
                "create",
                *(f"127.0.0.1:{p}" for p in ports),
                "--cluster-replicas",
                "0",
                "--cluster-yes",
            ],
            check=True,
            capture_output=True,
            timeout=30,
        )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            info = subprocess.run([cli, "-p", str(ports[0]), "cluster", "info"], capture_output=True, text=True)
            if "cluster_state:ok" in info.stdout:
                break
            time.sleep(0.1)
        else:
            raise RuntimeError("the Redis Cluster did not become ready")
        yield ports
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()


async def _standalone() -> Redis:
    client = Redis.from_url(REDIS_URL, socket_connect_timeout=2)
    try:
        await client.ping()
    except Exception as exc:  # any failure to connect means "unavailable"
        await client.aclose()
        require_service("redis", f"cannot connect to {REDIS_URL}: {exc}")
    return client


@pytest.fixture(params=["standalone", "cluster"])
async def kv(request: pytest.FixtureRequest) -> AsyncIterator[RedisKVStore]:
    if request.param == "standalone":
        client: Redis | RedisCluster = await _standalone()
    else:
        ports: list[int] = request.getfixturevalue("redis_cluster")
        client = RedisCluster(host="127.0.0.1", port=ports[0])
        await client.initialize()
    store = RedisKVStore(client, LIMITS, prefix=f"tptest-{uuid.uuid4().hex[:12]}")
    try:
        yield store
    finally:
        await store.purge_all()
        await store.close()
        await client.aclose()


@pytest.mark.skip(reason="store-wide revisions: on Redis revisions are per tenant (see the test below)")  # type: ignore[no-redef]
async def test_reads_at_a_past_revision_see_the_state_then() -> None:
    pass


async def test_past_reads_count_in_the_tenants_own_revisions(kv: RedisKVStore) -> None:
    await put(kv, "a/1", "v1")  # 1
    await put(kv, "a/2", "v1")  # 2
    await put(kv, "a/1", "v2")  # 3
    await kv.txn("a", Txn(success=[Op(OpKind.DELETE, "a/2")]), NOW)  # 4
    other = await put(kv, "b", 1, tenant="b")
    assert other.revision == 1  # tenant b counts its own revisions
    assert await kv.tenant_revision("a") == 4 and await kv.tenant_revision("b") == 1
    assert await kv.get("a", "a/1", NOW, revision=1) == KeyValue("a/1", "v1", 1, 1, 1)
    assert await kv.get("a", "a/2", NOW, revision=3) == KeyValue("a/2", "v1", 2, 2, 1)
    assert await kv.get("a", "a/2", NOW, revision=4) is None
    page = await kv.range("a", "", NOW, 1, revision=3)
    assert keys_of(page.items) == ["a/1"] and page.next_key == "a/1"
    assert keys_of((await kv.range("a", "", NOW, 1, after="a/1", revision=3)).items) == ["a/2"]
    with pytest.raises(InvalidRequestError) as caught:
        await kv.get("a", "a/1", NOW, revision=5)
    assert caught.value.code == "future_revision"


async def test_the_audit_sink_gets_changes_only_after_they_succeeded(kv: RedisKVStore) -> None:
    seen: list[str] = []

    async def sink(entries: list[AuditEntry]) -> None:
        seen.extend(e.action for e in entries)

    store = RedisKVStore(kv._client, LIMITS, sink, prefix=kv._prefix)  # the same keys, with a sink
    await store.txn("a", Txn(success=[Op(OpKind.PUT, "k", 1)]), NOW, entry("state.put", "a"))
    await store.txn("a", Txn(success=[Op(OpKind.DELETE, "nope")]), NOW, entry("state.delete", "a"))  # no change
    lease = await store.grant_lease("a", 10, NOW, entry("leases.create", "a"))
    with pytest.raises(NotFoundError):
        await store.txn("a", Txn(success=[Op(OpKind.PUT, "k", 2, 999_999)]), NOW, entry("state.put", "a"))
    await store.revoke_lease("a", lease.id, NOW, entry("leases.revoke", "a"))
    assert seen == ["state.put", "leases.create", "leases.revoke"]


async def test_tenant_names_cannot_escape_their_hash_tag(kv: RedisKVStore) -> None:
    for tenant in ("x}", "{x", "x}:kv", "a:b"):
        await put(kv, "k", tenant, tenant=tenant)
    for tenant in ("x}", "{x", "x}:kv", "a:b"):
        found = await kv.get(tenant, "k", NOW)
        assert found is not None and found.value == tenant and found.version == 1


def test_a_prefix_with_braces_is_refused() -> None:
    with pytest.raises(ValueError, match="prefix"):
        RedisKVStore(Redis(), prefix="a{b}")


async def test_concurrent_histories_are_linearizable(kv: RedisKVStore) -> None:
    """The SQL store's linearizability run (8 clients, hot keys, Wing-Gong/Lowe check) on Redis."""
    lin = test_kv_linearizable
    recorder = HistoryRecorder()
    await asyncio.gather(*(lin.run_client(kv, recorder, c) for c in range(lin.CLIENTS)))  # type: ignore[arg-type]
    history = recorder.history()
    assert len(history) == lin.CLIENTS * lin.OPS_PER_CLIENT
    result = check(history)
    assert result.ok, str(result)


async def test_concurrent_transfers_never_make_or_lose_money(kv: RedisKVStore) -> None:
    """The SQL store's bank test on Redis."""
    await test_kv_bank.test_concurrent_transfers_never_make_or_lose_money(kv)  # type: ignore[arg-type]
