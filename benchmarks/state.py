"""The state API against etcd and Redis: put, get and a 2-key CAS transaction, 1 and 16 client processes.

Usage: ``python benchmarks/state.py [--seconds 5] [--clients 1,16] [--database-url postgresql://...]
[--no-etcd] [--no-redis] [--taskplane-redis]``.

Systems, each started by this script on loopback ports of its own with a temporary data dir (removed
afterwards), measured one after the other in the same run:

* ``taskplane``: a server with the SQL backend (SQLite, the embedded default; PostgreSQL with
  ``--database-url``), over its HTTP API with the platform-admin key; every write is committed durably
  (SQLite ``synchronous=FULL``) before the answer;
* ``taskplane redis`` (with ``--taskplane-redis``): the same server with ``state_backend = redis`` on a
  ``redis-server`` of its own with ``appendfsync always``;
* ``etcd``: a single-node ``etcd`` (Debian ``etcd-server``; skipped with a message when the binary is
  missing) through its JSON gateway (``/v3/kv/put``, ``/v3/kv/range``, ``/v3/kv/txn``, base64 keys); it fsyncs
  its WAL before answering;
* ``redis fsync``: ``redis-server`` with ``appendonly yes``, ``appendfsync always`` (durable per write, like
  the two above), and ``redis no-fsync``: ``redis-server`` with no persistence (the speed bound).

Operations (a 64-byte value):

* ``put``: a fresh key per call;
* ``get``: one of 200 keys each client wrote beforehand;
* ``cas``: each client owns two keys; it reads both keys' ``mod_revision`` (untimed), then sends one
  transaction comparing both and writing both; only that call's latency is timed, and only successes are
  counted (with keys per client, all succeed). Redis: ``WATCH a b`` + ``MGET a b`` (untimed), then
  ``MULTI, SET a, SET b, EXEC`` as one pipelined round trip (timed; a nil ``EXEC`` is a failure).

Each cell runs N client processes (``multiprocessing``), each with its own keep-alive connection
(``httpx.Client``, or a minimal RESP client over one socket for Redis), all starting together after a barrier;
0.5 s of warm-up, then ``--seconds`` measured. ops/s = operations completed in the measured window / its
length; p50 and p99 are over every measured call.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import math
import multiprocessing as mp
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

from common import fresh_database, machine, server

WARMUP = 0.5
VALUE = "v" * 64
GET_KEYS = 200
OPS = ("put", "get", "cas")


def percentile(sorted_values: list[float], p: float) -> float:
    """Nearest-rank percentile of an ascending list."""
    if not sorted_values:
        return math.nan
    rank = max(1, math.ceil(p / 100 * len(sorted_values)))
    return sorted_values[rank - 1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"exited with {proc.returncode}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return
        time.sleep(0.05)
    raise RuntimeError(f"port {port} not open after {timeout}s")


# --- clients (one per worker process) ---------------------------------------------------------------------


class Resp:
    """A minimal RESP2 client over one socket: enough for SET/GET/MGET/WATCH/MULTI/EXEC, with pipelining."""

    def __init__(self, port: int, db: int = 0) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.rfile = self.sock.makefile("rb")
        if db:
            self.call("SELECT", str(db))

    @staticmethod
    def encode(*args: str) -> bytes:
        out = [f"*{len(args)}\r\n".encode()]
        for a in args:
            b = a.encode()
            out.append(b"$%d\r\n%s\r\n" % (len(b), b))
        return b"".join(out)

    def read(self) -> Any:
        line = self.rfile.readline()
        kind, rest = line[:1], line[1:-2]
        if kind == b"+":
            return rest.decode()
        if kind == b"-":
            raise RuntimeError(rest.decode())
        if kind == b":":
            return int(rest)
        if kind == b"$":
            n = int(rest)
            if n < 0:
                return None
            data = self.rfile.read(n + 2)[:-2]
            return data.decode()
        if kind == b"*":
            n = int(rest)
            return None if n < 0 else [self.read() for _ in range(n)]
        raise RuntimeError(f"bad reply {line!r}")

    def pipeline(self, *commands: tuple[str, ...]) -> list[Any]:
        self.sock.sendall(b"".join(self.encode(*c) for c in commands))
        return [self.read() for _ in commands]

    def call(self, *args: str) -> Any:
        return self.pipeline(args)[0]


def b64(s: str) -> str:
    return base64.b64encode(s.encode()).decode()


class Taskplane:
    def __init__(self, url: str, headers: dict[str, str]) -> None:
        self.c = httpx.Client(base_url=url, headers=headers, timeout=60)

    def put(self, key: str) -> bool:
        r = self.c.put(f"/platform/state/{key}", json=VALUE)
        r.raise_for_status()
        return True

    def get(self, key: str) -> bool:
        r = self.c.get(f"/platform/state/{key}")
        r.raise_for_status()
        return True

    def cas_prepare(self, a: str, b: str) -> Any:
        revs = []
        for key in (a, b):
            r = self.c.get(f"/platform/state/{key}")
            r.raise_for_status()
            revs.append(int(r.headers["etag"].strip('W/"')))
        return revs

    def cas(self, a: str, b: str, token: Any) -> bool:
        body = {
            "compare": [
                {"key": a, "target": "mod_revision", "op": "equal", "value": token[0]},
                {"key": b, "target": "mod_revision", "op": "equal", "value": token[1]},
            ],
            "success": [{"op": "put", "key": a, "value": VALUE}, {"op": "put", "key": b, "value": VALUE}],
            "failure": [],
        }
        r = self.c.post("/platform/state/transaction", json=body)
        r.raise_for_status()
        return bool(r.json()["succeeded"])


class Etcd:
    def __init__(self, url: str) -> None:
        self.c = httpx.Client(base_url=url, timeout=60)

    def put(self, key: str) -> bool:
        r = self.c.post("/v3/kv/put", json={"key": b64(key), "value": b64(VALUE)})
        r.raise_for_status()
        return True

    def get(self, key: str) -> bool:
        r = self.c.post("/v3/kv/range", json={"key": b64(key)})
        r.raise_for_status()
        return bool(r.json().get("kvs"))

    def cas_prepare(self, a: str, b: str) -> Any:
        revs = []
        for key in (a, b):
            r = self.c.post("/v3/kv/range", json={"key": b64(key)})
            r.raise_for_status()
            revs.append(r.json()["kvs"][0]["mod_revision"])
        return revs

    def cas(self, a: str, b: str, token: Any) -> bool:
        body = {
            "compare": [
                {"key": b64(a), "result": "EQUAL", "target": "MOD", "mod_revision": token[0]},
                {"key": b64(b), "result": "EQUAL", "target": "MOD", "mod_revision": token[1]},
            ],
            "success": [
                {"request_put": {"key": b64(a), "value": b64(VALUE)}},
                {"request_put": {"key": b64(b), "value": b64(VALUE)}},
            ],
        }
        r = self.c.post("/v3/kv/txn", json=body)
        r.raise_for_status()
        return bool(r.json().get("succeeded", False))  # the gateway leaves out a false


class Redis:
    def __init__(self, port: int) -> None:
        self.r = Resp(port)

    def put(self, key: str) -> bool:
        return self.r.call("SET", key, VALUE) == "OK"

    def get(self, key: str) -> bool:
        return self.r.call("GET", key) is not None

    def cas_prepare(self, a: str, b: str) -> Any:
        self.r.call("WATCH", a, b)
        return self.r.call("MGET", a, b)

    def cas(self, a: str, b: str, token: Any) -> bool:
        replies = self.r.pipeline(("MULTI",), ("SET", a, VALUE), ("SET", b, VALUE), ("EXEC",))
        return replies[-1] is not None


def make_client(target: dict[str, Any]) -> Any:
    kind = target["kind"]
    if kind == "taskplane":
        return Taskplane(target["url"], target["headers"])
    if kind == "etcd":
        return Etcd(target["url"])
    return Redis(target["port"])


def worker(target: dict[str, Any], op: str, tag: str, idx: int, seconds: float, barrier: Any, out: Any) -> None:
    try:
        out.put(measure(target, op, tag, idx, seconds, barrier))
    except BaseException as exc:
        barrier.abort()
        out.put(exc)
        raise


def measure(target: dict[str, Any], op: str, tag: str, idx: int, seconds: float, barrier: Any) -> Any:
    client = make_client(target)
    prefix = f"bench/{tag}/{op}/{idx}"
    if op == "get":
        for i in range(GET_KEYS):
            client.put(f"{prefix}/{i}")
    elif op == "cas":
        client.put(f"{prefix}/a")
        client.put(f"{prefix}/b")
    barrier.wait()
    start = time.perf_counter()
    measure_from = start + WARMUP
    stop = measure_from + seconds
    latencies: list[float] = []
    ok = failed = 0
    i = 0
    while True:
        now = time.perf_counter()
        if now >= stop:
            break
        if op == "put":
            t0 = time.perf_counter()
            good = client.put(f"{prefix}/{i}")
        elif op == "get":
            t0 = time.perf_counter()
            good = client.get(f"{prefix}/{i % GET_KEYS}")
        else:
            token = client.cas_prepare(f"{prefix}/a", f"{prefix}/b")
            t0 = time.perf_counter()
            good = client.cas(f"{prefix}/a", f"{prefix}/b", token)
        t1 = time.perf_counter()
        i += 1
        if t0 >= measure_from and t1 <= stop:
            if good:
                ok += 1
                latencies.append(t1 - t0)
            else:
                failed += 1
    return ok, failed, latencies


def run_cell(target: dict[str, Any], op: str, clients: int, seconds: float, tag: str) -> dict[str, float]:
    ctx = mp.get_context("fork")
    barrier = ctx.Barrier(clients)
    out = ctx.Queue()
    procs = [
        ctx.Process(target=worker, args=(target, op, tag, i, seconds, barrier, out), daemon=True)
        for i in range(clients)
    ]
    for p in procs:
        p.start()
    results = [out.get(timeout=seconds + 120) for _ in procs]
    errors = [r for r in results if isinstance(r, BaseException)]
    if errors:
        raise RuntimeError(f"a client of {target['name']} {op} failed: {errors[0]!r}")
    for p in procs:
        p.join(10)
        if p.exitcode not in (0, None):
            raise RuntimeError(f"a client of {target['name']} {op} exited with {p.exitcode}")
    ok = sum(r[0] for r in results)
    failed = sum(r[1] for r in results)
    lat = sorted(x for r in results for x in r[2])
    return {"ops": ok / seconds, "p50": percentile(lat, 50), "p99": percentile(lat, 99), "failed": failed}


# --- systems ---------------------------------------------------------------------------------------------


@contextlib.contextmanager
def taskplane(database_url: str | None) -> Iterator[dict[str, Any]]:
    with fresh_database(database_url) as url, server(url) as srv:
        yield {"kind": "taskplane", "url": srv.url, "headers": srv.headers}


@contextlib.contextmanager
def taskplane_on_redis(database_url: str | None, binary: str) -> Iterator[dict[str, Any]]:
    """A taskplane server whose state backend is a redis-server of its own (``appendfsync always``)."""
    with redis(binary, fsync=True) as rd, fresh_database(database_url) as url:
        settings = {"state_backend": "redis", "state_redis_url": f"redis://127.0.0.1:{rd['port']}/0"}
        with server(url, **settings) as srv:
            yield {"kind": "taskplane", "url": srv.url, "headers": srv.headers}


@contextlib.contextmanager
def etcd(binary: str) -> Iterator[dict[str, Any]]:
    scratch = Path(__file__).resolve().parent / ".data"
    scratch.mkdir(exist_ok=True)
    data = Path(tempfile.mkdtemp(prefix="etcd-bench-", dir=scratch))
    client, peer = free_port(), free_port()
    url = f"http://127.0.0.1:{client}"
    peer_url = f"http://127.0.0.1:{peer}"
    log = (data / "etcd.log").open("ab")
    proc = subprocess.Popen(
        [binary, "--name", "bench", "--data-dir", str(data / "member"),
         "--listen-client-urls", url, "--advertise-client-urls", url,
         "--listen-peer-urls", peer_url, "--initial-advertise-peer-urls", peer_url,
         "--initial-cluster", f"bench={peer_url}", "--initial-cluster-state", "new"],
        stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    log.close()
    try:
        wait_port(client, proc)
        deadline = time.monotonic() + 30
        while True:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.post(url + "/v3/kv/put", json={"key": b64("ready"), "value": b64("1")}).is_success:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError("etcd not ready:\n" + (data / "etcd.log").read_text()[-4000:])
            time.sleep(0.1)
        yield {"kind": "etcd", "url": url}
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        shutil.rmtree(data, ignore_errors=True)


@contextlib.contextmanager
def redis(binary: str, fsync: bool) -> Iterator[dict[str, Any]]:
    scratch = Path(__file__).resolve().parent / ".data"
    scratch.mkdir(exist_ok=True)
    data = Path(tempfile.mkdtemp(prefix="redis-bench-", dir=scratch))
    port = free_port()
    persistence = ["--appendonly", "yes", "--appendfsync", "always"] if fsync else ["--appendonly", "no"]
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(data), "--save", "",
         "--logfile", str(data / "redis.log"), *persistence],
        stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        wait_port(port, proc)
        yield {"kind": "redis", "port": port}
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        shutil.rmtree(data, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=5.0, help="measured seconds per cell")
    parser.add_argument("--clients", default="1,16", help="client process counts, comma-separated")
    parser.add_argument("--database-url", default=None, help="PostgreSQL for taskplane (default: SQLite)")
    parser.add_argument("--no-etcd", action="store_true")
    parser.add_argument("--no-redis", action="store_true")
    parser.add_argument(
        "--taskplane-redis", action="store_true", help="also taskplane with state_backend = redis (fsync always)"
    )
    args = parser.parse_args()
    counts = [int(c) for c in args.clients.split(",")]

    systems: list[tuple[str, Any]] = [("taskplane", lambda: taskplane(args.database_url))]
    etcd_bin = shutil.which("etcd")
    if args.no_etcd:
        pass
    elif etcd_bin is None:
        print("etcd: binary not found (apt-get install etcd-server); skipped")
    else:
        systems.append(("etcd", lambda: etcd(etcd_bin)))
    redis_bin = shutil.which("redis-server")
    if args.no_redis:
        pass
    elif redis_bin is None:
        print("redis: redis-server not found; skipped")
    else:
        if args.taskplane_redis:
            systems.append(("taskplane redis", lambda: taskplane_on_redis(args.database_url, redis_bin)))
        systems.append(("redis fsync", lambda: redis(redis_bin, fsync=True)))
        systems.append(("redis no-fsync", lambda: redis(redis_bin, fsync=False)))

    results: dict[tuple[str, str, int], dict[str, float]] = {}
    for name, start in systems:
        with start() as target:
            target["name"] = name
            for op in OPS:
                for n in counts:
                    cell = run_cell(target, op, n, args.seconds, tag=f"{time.time_ns()}")
                    results[(name, op, n)] = cell
                    print(
                        f"  {name:<15} {op:<4} {n:>3} clients: {cell['ops']:9.0f} ops/s"
                        f"  p50 {cell['p50'] * 1e3:6.2f} ms  p99 {cell['p99'] * 1e3:6.2f} ms"
                        f"  failed {cell['failed']:.0f}",
                        flush=True,
                    )

    db = "postgresql" if args.database_url else "sqlite (embedded default)"
    print()
    print(f"machine: {machine()}; taskplane database: {db}; {args.seconds:g} s per cell (+{WARMUP} s warm-up)")
    print("| system | op | clients | ops/s | p50 ms | p99 ms |")
    print("|---|---|---|---|---|---|")
    for (name, op, n), cell in results.items():
        print(f"| {name} | {op} | {n} | {cell['ops']:,.0f} | {cell['p50'] * 1e3:.2f} | {cell['p99'] * 1e3:.2f} |")
    print()
    others = [name for name, _ in systems if not name.startswith("taskplane")]
    if others:
        print("| op | clients | " + " | ".join(f"taskplane / {o}" for o in others) + " |")
        print("|---|---|" + "---|" * len(others))
        for op in OPS:
            for n in counts:
                tp = results[("taskplane", op, n)]["ops"]
                ratios = [f"{tp / results[(o, op, n)]['ops']:.2f}" for o in others]
                print(f"| {op} | {n} | " + " | ".join(ratios) + " |")
    print()
    top = max(counts)
    if "etcd" in others:
        for op in OPS:
            tp, et = results[("taskplane", op, top)], results[("etcd", op, top)]
            verdict = "met" if tp["ops"] >= et["ops"] and tp["p99"] <= 0.010 else "MISSED"
            print(
                f"target ({op}, {top} clients: taskplane ops/s >= etcd's, p99 <= 10 ms): {verdict} "
                f"({tp['ops']:,.0f} vs {et['ops']:,.0f} ops/s, p99 {tp['p99'] * 1e3:.2f} ms)"
            )


if __name__ == "__main__":
    main()
