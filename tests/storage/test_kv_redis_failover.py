"""What docs/state-redis.md says Redis can lose, shown on a real master and replica: a failover drops a write.

A master and a replica of our own on free loopback ports (no persistence, like the other Redis tests). The
replica is cut off from the master (pointed at a port nobody listens on: a partition, with the data it had) so
it misses a write the master acknowledged; the master is then killed and the replica promoted (what Sentinel or
a Cluster failover does). The acknowledged write is gone, and the tenant's
revision goes back, so the same revision number is handed out again to a different write: the ABA the docs warn
about. This is the documented behaviour of the Redis backend, not a bug; the SQL backend loses nothing.
"""

from __future__ import annotations

import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from redis import Redis as SyncRedis
from redis.asyncio import Redis

from taskplane.domain.state import Op, OpKind, Txn
from taskplane.storage.redis import RedisKVStore
from tests.storage.kv_contract import LIMITS, NOW
from tests.storage.test_kv_redis import _free_port, _wait_port
from tests.support.services import require_service


def _start(binary: str, port: int, workdir: Path, *extra: str) -> subprocess.Popen[bytes]:
    workdir.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--dir", str(workdir), "--logfile", str(workdir / "redis.log"), *extra],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
    )  # fmt: skip
    _wait_port(port)
    return proc


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], int, subprocess.Popen[bytes], int]]:
    """(master process, its port, replica process, its port), the replica in sync with the master."""
    binary = shutil.which("redis-server")
    if binary is None:
        require_service("redis", "redis-server is not installed")
        raise AssertionError("unreachable")
    master_port, replica_port = _free_port(), _free_port()
    master = _start(binary, master_port, tmp_path / "master")
    replica = _start(binary, replica_port, tmp_path / "replica", "--replicaof", "127.0.0.1", str(master_port))
    try:
        yield master, master_port, replica, replica_port
    finally:
        for proc in (master, replica):
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    proc.kill()


def _put(key: str, value: str) -> Txn:
    return Txn(success=[Op(OpKind.PUT, key, value)])


async def test_a_failover_loses_an_acknowledged_write_and_reuses_its_revision(
    pair: tuple[subprocess.Popen[bytes], int, subprocess.Popen[bytes], int],
) -> None:
    master, master_port, _replica, replica_port = pair
    prefix = f"tpfail-{uuid.uuid4().hex[:8]}"
    sync_master = SyncRedis(port=master_port)
    client = Redis(port=master_port)
    store = RedisKVStore(client, LIMITS, prefix=prefix)
    try:
        first = await store.txn("a", _put("kept", "v1"), NOW)
        assert sync_master.wait(1, 5000) == 1  # the replica has everything so far

        partitioned = SyncRedis(port=replica_port)
        partitioned.execute_command("REPLICAOF", "127.0.0.1", str(_free_port()))  # a partition: it keeps its data
        partitioned.close()
        lost = await store.txn("a", _put("lost", "v2"), NOW)  # ... and this write is acknowledged all the same
        assert lost.revision == first.revision + 1
        assert (await store.get("a", "lost", NOW)) is not None
    finally:
        await store.close()
        await client.aclose()
        sync_master.close()

    master.kill()  # the master dies before the write reached the replica
    master.wait(timeout=10)
    promoted_sync = SyncRedis(port=replica_port)
    promoted_sync.execute_command("REPLICAOF", "NO", "ONE")  # the failover
    promoted_sync.close()

    promoted = Redis(port=replica_port)
    store = RedisKVStore(promoted, LIMITS, prefix=prefix)
    try:
        assert (await store.get("a", "kept", NOW)) is not None
        assert (await store.get("a", "lost", NOW)) is None  # the acknowledged write is gone
        again = await store.txn("a", _put("other", "v3"), NOW)
        assert again.revision == lost.revision  # the same revision now names a different write (ABA)
    finally:
        await store.purge_all()
        await store.close()
        await promoted.aclose()
