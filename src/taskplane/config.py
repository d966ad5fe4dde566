"""Configuration, read once at the edge (environment ``TASKPLANE_*`` and an optional TOML file).

``bootstrap.py`` turns a ``Settings`` into the small frozen configs each component takes.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictFloat, StrictInt, StrictStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


def default_data_dir() -> Path:
    """``$XDG_DATA_HOME/taskplane`` or ``~/.local/share/taskplane``."""
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "taskplane"


# ------------------------------------------------------------------------------------------------ pools
# Quantities stay as given here (``"3500m"``, ``4``, ``"8Gi"``): ``bootstrap.build_pools`` parses them with
# ``domain.quantities``, which this leaf module may not import. Everything else is checked at load time.

DNS_LABEL = r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$"
NODE_PREFIX = r"^[a-z0-9]([a-z0-9-]{0,54}[a-z0-9])?$"  # leaves room for "-<index>" within 63 characters
_LABEL_KEY = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9._/-]{0,62})$")
_EXTENDED_NAME = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9._/-]{0,126}[A-Za-z0-9])?$")
_BUILTIN_RESOURCES = frozenset({"cpu", "memory", "gpu"})
MAX_POOL_NODES = 100_000
MAX_LABELS = 64
MAX_LABEL_VALUE = 256

CpuQuantity = StrictStr | StrictInt | StrictFloat  # ``4``, ``0.5``, ``"3500m"``
MemoryQuantity = StrictStr | StrictInt  # ``8589934592``, ``"8Gi"``


def _check_labels(labels: dict[str, str]) -> dict[str, str]:
    if len(labels) > MAX_LABELS:
        raise ValueError(f"at most {MAX_LABELS} labels")
    for key, value in labels.items():
        if not _LABEL_KEY.match(key):
            raise ValueError(f"label key {key!r} must be 1-63 letters, digits, '.', '_', '/' or '-'")
        if len(value) > MAX_LABEL_VALUE or "\x00" in value:
            raise ValueError(f"label {key!r}: the value must be at most {MAX_LABEL_VALUE} characters, without NUL")
    return labels


class NodeGroupSettings(BaseModel):
    """``count`` identical simulated nodes, named ``<name_prefix>-0`` to ``<name_prefix>-<count - 1>``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    count: int = Field(default=1, ge=1, le=MAX_POOL_NODES)
    name_prefix: str | None = Field(default=None, pattern=NODE_PREFIX)  # default: see ``PoolSettings.node_prefix``
    cpu: CpuQuantity
    memory: MemoryQuantity
    gpu: int = Field(default=0, ge=0, le=1024)
    extended: dict[str, int] = Field(default_factory=dict)  # e.g. {"example.com/fpga" = 2}
    max_tasks: int = Field(default=1000, ge=1, le=1_000_000)
    labels: dict[str, str] = Field(default_factory=dict)

    @field_validator("extended")
    @classmethod
    def _check_extended(cls, value: dict[str, int]) -> dict[str, int]:
        for name, amount in value.items():
            if name in _BUILTIN_RESOURCES or not _EXTENDED_NAME.match(name):
                raise ValueError(f"{name!r} is not an extended resource name (example: 'example.com/fpga')")
            if not 0 <= amount <= 1_000_000_000:
                raise ValueError(f"extended resource {name!r} must be between 0 and 1000000000")
        return value

    @field_validator("labels")
    @classmethod
    def _check_labels(cls, value: dict[str, str]) -> dict[str, str]:
        return _check_labels(value)


class PodmanSettings(BaseModel):
    """A podman pool: this machine's container engine (``[pools.podman]``). See docs/executor-podman.md."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    binary: str = "podman"  # or "docker": any engine with podman/docker's CLI
    global_args: list[str] = Field(default_factory=list)  # before the subcommand, e.g. ["--runtime", "runc"]
    run_args: list[str] = Field(default_factory=list)  # after "run", e.g. ["--ulimit", "nofile=1024:1024"]
    cpu: CpuQuantity | None = None  # capacity; default: this machine's
    memory: MemoryQuantity | None = None
    max_tasks: int | None = Field(default=None, ge=1, le=100_000)
    default_user: str | None = "65534:65534"  # when a task names none; null: the image's own user
    pull: Literal["never", "missing", "always"] = "never"
    pids_limit: int = Field(default=4096, ge=1, le=1_000_000)  # --pids-limit of every container
    labels: dict[str, str] = Field(default_factory=dict)  # added to every container's labels

    @field_validator("labels")
    @classmethod
    def _check_podman_labels(cls, value: dict[str, str]) -> dict[str, str]:
        return _check_labels(value)


class KubernetesSettings(BaseModel):
    """A Kubernetes pool: Jobs in a cluster (``[pools.kubernetes]``). See docs/executor-kubernetes.md."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kubeconfig: Path | None = None  # default: in-cluster service account, else $KUBECONFIG or ~/.kube/config
    context: str | None = None
    namespace_prefix: str = Field(default="tp-", pattern=r"^[a-z0-9]([a-z0-9-]{0,20})?$")
    node_selector: dict[str, str] = Field(default_factory=dict)
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] = "IfNotPresent"
    ttl_seconds_after_finished: int = Field(default=600, ge=0, le=7 * 86400)
    default_user: int = Field(default=65534, ge=1, le=2**31 - 1)
    unschedulable_timeout: float = Field(default=300.0, gt=0, le=86400)
    max_tasks: int = Field(default=10_000, ge=1, le=1_000_000)
    capacity_refresh: float = Field(default=30.0, ge=1, le=3600)
    split_log_streams: bool = False  # stdout and stderr apart (Kubernetes 1.32+, gate PodLogsQuerySplitStreams)

    @field_validator("node_selector")
    @classmethod
    def _check_selector(cls, value: dict[str, str]) -> dict[str, str]:
        return _check_labels(value)


class PoolSettings(BaseModel):
    """One pool of nodes served by one executor (``[[pools]]`` in the TOML file, or ``TASKPLANE_POOLS``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=DNS_LABEL)
    executor: Literal["local", "simulated", "podman", "kubernetes"]
    placement: Literal["binpack", "spread"] = "binpack"
    speed: float | None = Field(default=None, gt=0, le=1e9)  # simulated only: virtual seconds per real second
    labels: dict[str, str] = Field(default_factory=dict)  # on every node of the pool; a group's own labels win
    nodes: list[NodeGroupSettings] = Field(default_factory=list)  # simulated only
    podman: PodmanSettings | None = None  # podman only (default settings when left out)
    kubernetes: KubernetesSettings | None = None  # kubernetes only (default settings when left out)

    @field_validator("labels")
    @classmethod
    def _check_labels(cls, value: dict[str, str]) -> dict[str, str]:
        return _check_labels(value)

    @model_validator(mode="after")
    def _check_executor_fields(self) -> PoolSettings:
        if self.podman is not None and self.executor != "podman":
            raise ValueError(f"pool {self.name!r}: 'podman' settings are for podman pools")
        if self.kubernetes is not None and self.executor != "kubernetes":
            raise ValueError(f"pool {self.name!r}: 'kubernetes' settings are for kubernetes pools")
        if self.executor in ("local", "podman", "kubernetes"):
            if self.nodes:
                raise ValueError(
                    f"pool {self.name!r}: 'nodes' is for simulated pools (a {self.executor} pool finds its own)"
                )
            if self.speed is not None:
                raise ValueError(f"pool {self.name!r}: 'speed' is for simulated pools")
            return self
        if not self.nodes:
            raise ValueError(f"pool {self.name!r}: a simulated pool needs at least one [[pools.nodes]] group")
        total = sum(group.count for group in self.nodes)
        if total > MAX_POOL_NODES:
            raise ValueError(f"pool {self.name!r} has {total} nodes, more than {MAX_POOL_NODES}")
        prefixes = [self.node_prefix(j) for j in range(len(self.nodes))]
        dup = sorted({p for p in prefixes if prefixes.count(p) > 1})
        if dup:
            raise ValueError(f"pool {self.name!r}: node groups share the name_prefix {dup[0]!r}")
        return self

    def node_prefix(self, group: int) -> str:
        """The name prefix of node group ``group``: its own, else the pool's name (``<pool>-<group>`` if several)."""
        prefix = self.nodes[group].name_prefix
        if prefix is not None:
            return prefix
        return self.name if len(self.nodes) == 1 else f"{self.name}-{group}"

    def node_names(self, group: int) -> list[str]:
        """The names of the nodes of group ``group``: ``<prefix>-0`` ... ``<prefix>-<count - 1>``."""
        prefix = self.node_prefix(group)
        return [f"{prefix}-{i}" for i in range(self.nodes[group].count)]


class Settings(BaseSettings):
    """Every setting of a taskplane server. Environment variables are ``TASKPLANE_<NAME>``."""

    model_config = SettingsConfigDict(env_prefix="TASKPLANE_", extra="forbid", frozen=True)

    data_dir: Path = Field(default_factory=default_data_dir)
    database_url: str | None = None  # default: sqlite file in data_dir
    host: str = "127.0.0.1"
    port: int = Field(default=8420, ge=0, le=65535)
    node_name: str | None = None  # default: the host name
    # Labels this platform's containers, Jobs and namespaces; default: derived from the database URL, so the
    # replicas of one platform agree and two platforms sharing a container engine or a cluster never do.
    instance: str | None = Field(default=None, pattern=r"^[a-z0-9]([a-z0-9-]{0,30}[a-z0-9])?$")
    node_cpu: str | None = None  # override detected capacity, e.g. "4" or "3500m"
    node_memory: str | None = None  # override detected capacity, e.g. "8Gi"
    max_tasks_per_node: int | None = Field(default=None, ge=1)  # default: bounded by the fd limit
    default_cpu: str = "1"
    default_memory: str = "256Mi"
    # Per stream per attempt. Enforced with RLIMIT_FSIZE, so it also caps any single file a task writes.
    log_limit: str = "1Gi"
    kill_grace: float = Field(default=10.0, ge=0, le=3600)
    node_queue: int = Field(default=4, ge=0, le=1000)  # launches a node holds ready beyond its free capacity
    max_body_bytes: int = Field(default=1 << 20, ge=1024)
    max_batch_body_bytes: int = Field(default=64 << 20, ge=1024)
    max_batch: int = Field(default=1000, ge=1, le=1000)
    max_argv_bytes: int = Field(default=128 << 10, ge=1024)
    max_env_bytes: int = Field(default=128 << 10, ge=1024)
    cgroups: str = Field(default="auto", pattern="^(auto|v1|v2|none)$")
    supervisor_idle_exit: float = Field(default=300.0, ge=1)
    log_level: str = "info"
    log_format: str = Field(default="console", pattern="^(console|json)$")
    # Scheduling policy (docs/scheduling.md).
    preemption: bool = True  # lower-priority or borrowed work may be stopped to make room for a blocked head
    backfill: bool = True  # smaller tasks may run around a blocked head when they do not delay it
    fair_share: bool = True  # at equal priority, tenants go by weighted dominant share (else by arrival)
    max_preemptions_per_cycle: int = Field(default=16, ge=0, le=10_000)
    # Security (docs/security.md).
    insecure_no_auth: bool = False  # every request is a platform admin; refused unless host is loopback
    auth_pepper: str | None = Field(default=None, min_length=64, pattern="^[0-9a-fA-F]+$")  # hex; shared by replicas
    auth_pepper_file: Path | None = None  # default: <data_dir>/auth.pepper, created 0600 on first start
    key_cache_seconds: float = Field(default=1.0, ge=0, le=60)  # other replicas see a revocation within this
    auth_failure_limit: int = Field(default=10, ge=1, le=100_000)  # failed logins per address (and key) ...
    auth_failure_window: float = Field(default=60.0, gt=0, le=86400)  # ... refilled over this many seconds
    tenant_rate_limit: float = Field(default=1000.0, ge=0)  # requests/s per tenant; 0 = unlimited
    tenant_rate_burst: float = Field(default=2000.0, ge=1)
    trusted_proxies: list[str] = Field(default_factory=list)  # CIDRs whose X-Forwarded-For is believed
    max_header_bytes: int = Field(default=16 << 10, ge=1024, le=1 << 20)
    tls_cert: Path | None = None
    tls_key: Path | None = None
    oidc_issuer: str | None = None
    oidc_audience: str | None = None
    oidc_jwks_url: str | None = None
    oidc_jwks_file: Path | None = None
    oidc_algorithms: list[str] = Field(default_factory=lambda: ["RS256", "ES256"])
    oidc_tenants_claim: str = "taskplane_tenants"
    oidc_name_claim: str = "email"
    oidc_leeway: float = Field(default=30.0, ge=0, le=600)
    # State API (docs/state.md).
    state_max_value_bytes: int = Field(default=1 << 20, ge=1024, le=64 << 20)
    state_max_ops: int = Field(default=128, ge=1, le=10_000)  # compares + ops per transaction
    state_history_revisions: int = Field(default=100_000, ge=1000)  # kept for past reads and resumed watches
    state_backend: Literal["sql", "redis"] = "sql"  # redis: see docs/state-redis.md for what it can lose
    state_redis_url: str = "redis://127.0.0.1:6379/0"
    state_redis_cluster: bool = False
    state_redis_prefix: str = Field(default="tp", pattern=r"^[A-Za-z0-9_.:-]{1,32}$")
    # Empty: one pool "default" served by the local executor. ``TASKPLANE_POOLS`` takes a JSON list, decoded by
    # ``_decode_pools`` (NoDecode) so that bad JSON is a ValidationError naming the field, like any other bad value.
    pools: Annotated[list[PoolSettings], NoDecode] = Field(default_factory=list)

    @field_validator("pools", mode="before")
    @classmethod
    def _decode_pools(cls, value: Any) -> Any:
        if isinstance(value, str | bytes):
            try:
                return json.loads(value)
            except ValueError as exc:
                raise ValueError(f"TASKPLANE_POOLS must be a JSON list of pools: {exc}") from None
        return value

    @field_validator("pools")
    @classmethod
    def _check_pools(cls, pools: list[PoolSettings]) -> list[PoolSettings]:
        names = [pool.name for pool in pools]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"the pool name {dup[0]!r} is used twice")
        for kind in ("local", "podman"):
            same = [pool.name for pool in pools if pool.executor == kind]
            if len(same) > 1:
                raise ValueError(f"at most one {kind} pool (this machine is one node), got {', '.join(same)}")
        # A node name is unique across pools: attempts and capacity reports name nodes without their pool.
        # ``<prefix>-<index>`` names collide only when prefixes are equal, so comparing prefixes is enough.
        seen: dict[str, str] = {}
        for pool in pools:
            for j in range(len(pool.nodes)):
                prefix = pool.node_prefix(j)
                if prefix in seen:
                    raise ValueError(f"pools {seen[prefix]!r} and {pool.name!r} both name nodes {prefix!r}-<n>")
                seen[prefix] = pool.name
        return pools

    @field_validator("trusted_proxies")
    @classmethod
    def _check_proxies(cls, value: list[str]) -> list[str]:
        for item in value:
            try:
                ipaddress.ip_network(item, strict=False)
            except ValueError:
                raise ValueError(f"trusted_proxies: {item!r} is not an address or CIDR network") from None
        return value

    @field_validator("oidc_algorithms")
    @classmethod
    def _check_algorithms(cls, value: list[str]) -> list[str]:
        allowed = {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA"}
        for alg in value:
            if alg not in allowed:
                raise ValueError(f"oidc_algorithms: {alg!r} is not accepted (asymmetric only: {sorted(allowed)})")
        return value

    @model_validator(mode="after")
    def _check_security(self) -> Settings:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("tls_cert and tls_key go together")
        if self.oidc_issuer is not None:
            if not self.oidc_audience:
                raise ValueError("oidc_issuer needs oidc_audience")
            if (self.oidc_jwks_url is None) == (self.oidc_jwks_file is None):
                raise ValueError("oidc_issuer needs exactly one of oidc_jwks_url and oidc_jwks_file")
        return self

    def resolved_database_url(self) -> str:
        """The database URL, defaulting to the embedded SQLite file under ``data_dir``."""
        if self.database_url:
            return self.database_url
        return f"sqlite:///{self.data_dir / 'taskplane.db'}"


def load_settings(config_file: Path | None = None, **overrides: Any) -> Settings:
    """Settings from (lowest first) defaults, a TOML file, the environment, then explicit ``overrides``.

    ``overrides`` with value ``None`` are ignored so CLI options that were not given do not win.
    """
    file_values: dict[str, Any] = {}
    path = config_file or (Path(os.environ["TASKPLANE_CONFIG"]) if os.environ.get("TASKPLANE_CONFIG") else None)
    if path is not None:
        with path.open("rb") as fh:
            file_values = tomllib.load(fh)
    env_values = Settings().model_dump(exclude_unset=True)
    merged = {**file_values, **env_values, **{k: v for k, v in overrides.items() if v is not None}}
    return Settings(**merged)
