"""The composition root: settings -> adapters -> services -> app. The ONLY place that picks adapters."""

from __future__ import annotations

import asyncio
import hashlib
import ipaddress
import json
import logging
import os
import socket
import sys
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from typing import IO, TYPE_CHECKING

from taskplane.config import PoolSettings, Settings
from taskplane.domain import quantities as q
from taskplane.domain.audit import AuditEntry
from taskplane.domain.pool import DEFAULT_POOL, Node, PlacementStrategy, Pool
from taskplane.domain.resources import Resources, extended_of
from taskplane.domain.tenant import Quota
from taskplane.errors import InvalidRequestError
from taskplane.scheduler import Policy
from taskplane.services.auth import AuthConfig, AuthService, OidcConfig, new_pepper
from taskplane.services.clock import SystemClock
from taskplane.services.engine import Engine, EngineConfig
from taskplane.services.ids import new_reservation_id
from taskplane.services.platform import Housekeeping, Platform
from taskplane.services.ports import Executor, KVLimits, KVStore
from taskplane.services.resources import ResourceService
from taskplane.services.security import AuditService, SecurityService
from taskplane.services.specs import SpecLimits
from taskplane.services.state import StateService
from taskplane.services.tasks import TaskService, TaskServiceConfig
from taskplane.services.tenants import TenantService

if TYPE_CHECKING:
    from taskplane.storage.sql.backup import ExportSummary, ImportSummary

log = logging.getLogger("taskplane")

# Variables a task inherits from the server's environment; everything else comes from the task's own env.
INHERITED_ENV = ("PATH", "LANG", "LC_ALL", "TZ", "HOME", "USER", "LOGNAME", "TMPDIR")


class JsonLogFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message (and the exception, if any)."""

    def format(self, record: logging.LogRecord) -> str:
        """Render ``record`` as a JSON line."""
        body = {
            "time": self.formatTime(record),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            body["exception"] = self.formatException(record.exc_info)
        return json.dumps(body)


def configure_logging(settings: Settings) -> None:
    """Plain or JSON log lines on stderr."""
    level = getattr(logging, settings.log_level.upper(), logging.INFO)
    handler = logging.StreamHandler(sys.stderr)
    if settings.log_format == "json":
        handler.setFormatter(JsonLogFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s"))
    logging.basicConfig(level=level, handlers=[handler], force=True)
    logging.getLogger("alembic").setLevel(logging.WARNING)


def upgrade_database(settings: Settings) -> None:
    """Apply every pending migration to the configured database."""
    from taskplane.storage.sql.migrate import upgrade_database as upgrade

    settings.data_dir.mkdir(parents=True, exist_ok=True)
    upgrade(settings.resolved_database_url())


def build_executor(settings: Settings) -> Executor:
    """The local executor, configured from settings."""
    from taskplane.executors.local import LocalExecutor, LocalExecutorConfig

    data = settings.data_dir
    return LocalExecutor(
        LocalExecutorConfig(
            state_dir=data / "supervisor",
            logs_dir=data / "logs",
            work_dir=data / "work",
            node_name=settings.node_name or socket.gethostname(),
            millicpu=None if settings.node_cpu is None else q.parse_millicpu(settings.node_cpu, field="node_cpu"),
            memory=None if settings.node_memory is None else q.parse_bytes(settings.node_memory, field="node_memory"),
            max_tasks=settings.max_tasks_per_node,
            log_limit_bytes=q.parse_bytes(settings.log_limit, field="log_limit"),
            cgroups=settings.cgroups,
            idle_exit=settings.supervisor_idle_exit,
        )
    )


def build_pools(
    settings: Settings, quota_for: Callable[[str], Quota | None] | None = None
) -> list[tuple[Pool, Executor]]:
    """Every configured pool with the executor that serves it, in configuration order (executors not opened).

    No ``pools`` configured: one pool ``default`` served by the local executor. A local pool's one node is this
    machine (``executor.nodes()``) with the pool's labels; a simulated pool's nodes come from its node groups,
    the pool's labels under each group's own. Quantities are parsed here (this is the first place allowed to use
    ``domain.quantities``): a bad one raises ``InvalidRequestError`` naming the field, e.g.
    ``pools[1].nodes[0].memory``, before anything starts. Node names must be unique across pools.
    """
    configured = settings.pools or [PoolSettings(name=DEFAULT_POOL, executor="local")]
    built: list[tuple[Pool, Executor]] = []
    owner: dict[str, str] = {}  # node name -> pool
    for i, pool_settings in enumerate(configured):
        placement = PlacementStrategy(pool_settings.placement)
        executor: Executor
        if pool_settings.executor in ("local", "podman", "kubernetes"):
            if pool_settings.executor == "local":
                executor = build_executor(settings)
            elif pool_settings.executor == "podman":
                executor = _build_podman(settings, pool_settings, f"pools[{i}]")
            else:
                executor = _build_kubernetes(settings, pool_settings, quota_for)
            nodes = tuple(
                Node(cap.node, pool_settings.name, cap.total, cap.max_tasks, {**cap.labels, **pool_settings.labels})
                for cap in executor.nodes()
            )
        else:
            executor, nodes = _build_simulated(pool_settings, f"pools[{i}]")
        for node in nodes:
            other = owner.setdefault(node.name, pool_settings.name)
            if other != pool_settings.name:
                raise InvalidRequestError(f"pools: node {node.name!r} is in both {other!r} and {pool_settings.name!r}")
        built.append((Pool(pool_settings.name, pool_settings.executor, placement, nodes), executor))
    return built


def instance_name(settings: Settings) -> str:
    """The label value naming this platform's containers and Jobs (``settings.instance`` or from the database)."""
    if settings.instance is not None:
        return settings.instance
    return "tp-" + hashlib.sha256(settings.resolved_database_url().encode()).hexdigest()[:12]


def _build_podman(settings: Settings, pool: PoolSettings, where: str) -> Executor:
    from taskplane.config import PodmanSettings
    from taskplane.executors.podman import PodmanExecutor, PodmanExecutorConfig

    ps = pool.podman or PodmanSettings()
    return PodmanExecutor(
        PodmanExecutorConfig(
            logs_dir=settings.data_dir / "logs",
            node_name=f"{settings.node_name or socket.gethostname()}-{pool.name}",
            instance=instance_name(settings),
            binary=ps.binary,
            global_args=tuple(ps.global_args),
            run_args=tuple(ps.run_args),
            millicpu=None if ps.cpu is None else q.parse_millicpu(ps.cpu, field=f"{where}.podman.cpu"),
            memory=None if ps.memory is None else q.parse_bytes(ps.memory, field=f"{where}.podman.memory"),
            max_tasks=ps.max_tasks,
            default_user=ps.default_user,
            pull=ps.pull,
            log_limit_bytes=q.parse_bytes(settings.log_limit, field="log_limit"),
            pids_limit=ps.pids_limit,
            labels=dict(ps.labels),
        )
    )


def _build_kubernetes(
    settings: Settings, pool: PoolSettings, quota_for: Callable[[str], Quota | None] | None = None
) -> Executor:
    from taskplane.config import KubernetesSettings
    from taskplane.executors.kubernetes import KubernetesExecutor, KubernetesExecutorConfig

    ks = pool.kubernetes or KubernetesSettings()
    return KubernetesExecutor(
        KubernetesExecutorConfig(
            pool=pool.name,
            node_name=pool.name,
            logs_dir=settings.data_dir / "logs",
            instance=instance_name(settings),
            kubeconfig=ks.kubeconfig,
            context=ks.context,
            namespace_prefix=ks.namespace_prefix,
            node_selector=dict(ks.node_selector),
            image_pull_policy=ks.image_pull_policy,
            ttl_seconds_after_finished=ks.ttl_seconds_after_finished,
            default_user=ks.default_user,
            unschedulable_timeout=ks.unschedulable_timeout,
            max_tasks=ks.max_tasks,
            capacity_refresh=ks.capacity_refresh,
            log_limit_bytes=q.parse_bytes(settings.log_limit, field="log_limit"),
            split_log_streams=ks.split_log_streams,
        ),
        quota_for=quota_for,
    )


def _build_simulated(pool: PoolSettings, where: str) -> tuple[Executor, tuple[Node, ...]]:
    from taskplane.executors.simulated import SimNode, SimulatedExecutor, SimulatedExecutorConfig

    sim_nodes: list[SimNode] = []
    for j, group in enumerate(pool.nodes):
        at = f"{where}.nodes[{j}]"
        total = Resources(
            millicpu=q.parse_millicpu(group.cpu, field=f"{at}.cpu"),
            memory=q.parse_bytes(group.memory, field=f"{at}.memory"),
            gpu=group.gpu,
            extended=extended_of(group.extended),
        )
        labels = {**pool.labels, **group.labels}  # one mapping shared by the group's nodes: 100,000 stay cheap
        sim_nodes.extend(SimNode(name, total, group.max_tasks, labels) for name in pool.node_names(j))
    executor = SimulatedExecutor(SimulatedExecutorConfig(tuple(sim_nodes), pool.speed or 1.0))
    nodes = tuple(Node(n.name, pool.name, n.total, n.max_tasks, n.labels) for n in sim_nodes)
    return executor, nodes


def build_platform(settings: Settings) -> Platform:
    """Wire the platform: SQL store, local executor, engine and services. Migrations are applied here."""
    from taskplane.storage.sql.kv import SqlKVStore
    from taskplane.storage.sql.store import create_task_store

    upgrade_database(settings)
    store = create_task_store(settings.resolved_database_url())
    engines: list[Engine] = []  # the engine is built after its executors; they look tenants up through it

    def quota_for(tenant: str) -> Quota | None:
        """A tenant's hard quota for its Kubernetes namespace; none for borrowers (they may exceed it)."""
        found = engines[0].tenant(tenant) if engines else None
        return None if found is None or found.borrowing else found.quota

    pools = build_pools(settings, quota_for)
    executor = pools[0][1]
    clock = SystemClock()
    base_env = {k: os.environ[k] for k in INHERITED_ENV if k in os.environ}
    base_env.setdefault("PATH", os.defpath)
    engine = Engine(
        store,
        pools,
        clock,
        EngineConfig(
            kill_grace=settings.kill_grace,
            node_queue=settings.node_queue,
            base_env=base_env,
            policy=Policy(
                max_placements=1000,
                preemption=settings.preemption,
                backfill=settings.backfill,
                fair_share=settings.fair_share,
                max_preemptions=settings.max_preemptions_per_cycle,
            ),
        ),
    )
    engines.append(engine)
    defaults = Resources(
        millicpu=q.parse_millicpu(settings.default_cpu, field="default_cpu"),
        memory=q.parse_bytes(settings.default_memory, field="default_memory"),
    )
    tasks = TaskService(
        store,
        engine,
        executor,
        clock,
        TaskServiceConfig(
            spec_limits=SpecLimits(
                default_resources=defaults,
                max_argv_bytes=settings.max_argv_bytes,
                max_env_bytes=settings.max_env_bytes,
            ),
            max_batch=settings.max_batch,
        ),
    )
    auth = AuthService(store, clock, build_auth_config(settings))
    limits = KVLimits(max_value_bytes=settings.state_max_value_bytes, max_ops=settings.state_max_ops)
    kv: KVStore = (
        build_redis_kv(settings, limits, store.append_audit)
        if settings.state_backend == "redis"
        else SqlKVStore(settings.resolved_database_url(), limits)
    )
    return Platform(
        tasks=tasks,
        engine=engine,
        store=store,
        executor=executor,
        tenants=TenantService(store, engine, clock, on_deleted=auth.forget_tenant, state=kv),
        resources=ResourceService(store, engine, clock, new_reservation_id),
        auth=auth,
        security=SecurityService(store, auth, clock, lambda name: engine.tenant(name) is not None),
        audit=AuditService(store),
        clock=clock,
        state=StateService(kv, clock, limits, lambda name: engine.tenant(name) is not None),
        kv=kv,
        housekeeping=Housekeeping(history_revisions=settings.state_history_revisions),
    )


def build_redis_kv(
    settings: Settings, limits: KVLimits, audit: Callable[[list[AuditEntry]], Awaitable[object]]
) -> KVStore:
    """The state store on Redis or Redis Cluster (``state_backend = "redis"``; needs ``taskplane[redis]``)."""
    try:
        from redis.asyncio import Redis
        from redis.asyncio.cluster import RedisCluster
    except ImportError as exc:  # the optional extra is not installed
        raise SystemExit(
            "taskplane: state_backend = 'redis' needs the redis extra: pip install 'taskplane[redis]'"
        ) from exc
    from taskplane.storage.redis.kv import RedisKVStore

    url = settings.state_redis_url
    client = RedisCluster.from_url(url) if settings.state_redis_cluster else Redis.from_url(url)

    async def sink(entries: list[AuditEntry]) -> None:
        await audit(entries)

    return RedisKVStore(client, limits, sink, prefix=settings.state_redis_prefix, owns_client=True)


def write_secret(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` readable by its owner only (0600 from creation: never briefly wider)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, text.encode())
    finally:
        os.close(fd)


def load_pepper(settings: Settings) -> bytes:
    """The API-key pepper: ``auth_pepper`` (hex), else its file, created with a random pepper on first start."""
    if settings.auth_pepper is not None:
        return bytes.fromhex(settings.auth_pepper)
    path = settings.auth_pepper_file or settings.data_dir / "auth.pepper"
    if not path.exists():
        write_secret(path, new_pepper().hex() + "\n")
        log.info("created the API key pepper %s (every replica needs the same one)", path)
    return bytes.fromhex(path.read_text().strip())


def build_auth_config(settings: Settings) -> AuthConfig:
    """Authentication settings from ``settings`` (the pepper is read or created here)."""
    oidc = None
    if settings.oidc_issuer is not None and settings.oidc_audience is not None:
        oidc = OidcConfig(
            issuer=settings.oidc_issuer,
            audience=settings.oidc_audience,
            jwks_url=settings.oidc_jwks_url,
            jwks_file=settings.oidc_jwks_file,
            algorithms=frozenset(settings.oidc_algorithms),
            tenants_claim=settings.oidc_tenants_claim,
            name_claim=settings.oidc_name_claim,
            leeway=settings.oidc_leeway,
        )
    return AuthConfig(
        pepper=load_pepper(settings),
        oidc=oidc,
        key_cache_seconds=settings.key_cache_seconds,
        failure_burst=settings.auth_failure_limit,
        failure_window=settings.auth_failure_window,
        insecure_no_auth=settings.insecure_no_auth,
    )


def admin_token_path(settings: Settings) -> Path:
    """Where the first start leaves the platform-admin key for the CLI (and ``make run``)."""
    return settings.data_dir / "admin.token"


async def first_start(platform: Platform, settings: Settings) -> str | None:
    """On a database that never had an API key, create the platform-admin key; returns its token (else None)."""
    token = await platform.security.bootstrap_admin_key()
    if token is not None:
        write_secret(admin_token_path(settings), token + "\n")
    return token


def mint_admin_token(settings: Settings) -> Path:
    """Create a new platform-admin key straight in the database (no HTTP) and write it to ``admin.token``."""
    from taskplane.storage.sql.store import create_task_store

    upgrade_database(settings)
    store = create_task_store(settings.resolved_database_url())
    clock = SystemClock()
    security = SecurityService(store, AuthService(store, clock, build_auth_config(settings)), clock)

    async def mint() -> str:
        try:
            return await security.mint_admin_key("minted by 'taskplane db admin-token'")
        finally:
            await store.close()

    token = asyncio.run(mint())
    path = admin_token_path(settings)
    write_secret(path, token + "\n")
    return path


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback addresses (127.0.0.0/8, ::1)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def serve(settings: Settings) -> None:
    """Run the server in the foreground until interrupted."""
    import uvicorn

    from taskplane.api.app import ApiConfig, create_app
    from taskplane.api.security import GateConfig

    configure_logging(settings)
    if settings.insecure_no_auth:
        if not is_loopback(settings.host):
            raise SystemExit(
                f"taskplane: refusing --insecure-no-auth on {settings.host}: without authentication the server "
                "may only listen on loopback (127.0.0.1, ::1, localhost)"
            )
        log.warning(
            "!!! AUTHENTICATION IS OFF (--insecure-no-auth): every local process is a platform administrator. "
            "For experiments only. !!!"
        )
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    platform = build_platform(settings)
    if not settings.insecure_no_auth:
        token = asyncio.run(first_start(platform, settings))
        if token is not None:
            print(
                "taskplane: created the platform-admin API key. It is shown once, here, and kept (mode 0600) in "
                f"{admin_token_path(settings)} for the CLI:\n\n    {token}\n",
                file=sys.stderr,
                flush=True,
            )
    gate = GateConfig(
        trusted_proxies=tuple(ipaddress.ip_network(p, strict=False) for p in settings.trusted_proxies),
        max_header_bytes=settings.max_header_bytes,
        tenant_rate=settings.tenant_rate_limit,
        tenant_burst=settings.tenant_rate_burst,
        tls=settings.tls_cert is not None,
    )
    app = create_app(
        platform,
        ApiConfig(
            max_body_bytes=settings.max_body_bytes, max_batch_body_bytes=settings.max_batch_body_bytes, gate=gate
        ),
    )
    scheme = "https" if settings.tls_cert is not None else "http"
    log.info("taskplane serving on %s://%s:%d (data dir %s)", scheme, settings.host, settings.port, settings.data_dir)
    uvicorn.run(
        app,
        host=settings.host,
        port=settings.port,
        log_level="warning",
        access_log=False,
        timeout_graceful_shutdown=5,
        lifespan="on",
        ssl_certfile=str(settings.tls_cert) if settings.tls_cert is not None else None,
        ssl_keyfile=str(settings.tls_key) if settings.tls_key is not None else None,
        h11_max_incomplete_event_size=settings.max_header_bytes,
    )


def export_state(settings: Settings, out: IO[bytes]) -> ExportSummary:
    """Write every tenant's state entries as JSON lines to ``out``, straight from the database (one snapshot)."""
    from taskplane.storage.sql.backup import export_state as export
    from taskplane.storage.sql.engine import create_sql_engine

    engine = create_sql_engine(settings.resolved_database_url(), pool_size=1)
    try:
        return export(engine, out, SystemClock().now())
    finally:
        engine.dispose()


def import_state(settings: Settings, lines: Iterable[bytes], source: str) -> ImportSummary:
    """Restore a state export into the (migrated, empty) database, audited as the server's own act."""
    from taskplane.services.access import Caller
    from taskplane.storage.sql.backup import import_state as restore
    from taskplane.storage.sql.engine import create_sql_engine

    upgrade_database(settings)
    audit = Caller.system("bootstrap").entry(
        SystemClock().now(), "state.import", "state", None, why="'taskplane db state-import'", file=source
    )
    engine = create_sql_engine(settings.resolved_database_url(), pool_size=1)
    try:
        return restore(engine, lines, audit)
    finally:
        engine.dispose()


def backup_database(settings: Settings, dest: Path) -> Path:
    """Copy the live SQLite database to ``dest`` with SQLite's online backup API (PostgreSQL: refused)."""
    from taskplane.storage.sql.backup import backup_sqlite

    return backup_sqlite(settings.resolved_database_url(), dest)
