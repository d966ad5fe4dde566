"""Configuration, read once at the edge (environment ``TASKPLANE_*`` and an optional TOML file).

``bootstrap.py`` turns a ``Settings`` into the small frozen configs each component takes.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


def default_data_dir() -> Path:
    """``$XDG_DATA_HOME/taskplane`` or ``~/.local/share/taskplane``."""
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "taskplane"


class Settings(BaseSettings):
    """Every setting of a taskplane server. Environment variables are ``TASKPLANE_<NAME>``."""

    model_config = SettingsConfigDict(env_prefix="TASKPLANE_", extra="forbid", frozen=True)

    data_dir: Path = Field(default_factory=default_data_dir)
    database_url: str | None = None  # default: sqlite file in data_dir
    host: str = "127.0.0.1"
    port: int = Field(default=8420, ge=0, le=65535)
    node_name: str | None = None  # default: the host name
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
