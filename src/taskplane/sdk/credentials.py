"""Where a client finds its server and its token when the caller does not say; read once, when a client is made.

    url:   argument > $TASKPLANE_URL > client config ``url`` > http://127.0.0.1:8420
    token: argument > $TASKPLANE_TOKEN > client config ``token`` > the server data dir's ``admin.token``

The client config is a TOML file (``url``, ``token``) at ``$TASKPLANE_CLIENT_CONFIG``, else
``$XDG_CONFIG_HOME/taskplane/client.toml`` (``~/.config/taskplane/client.toml``); ``taskplane login`` writes it,
mode 0600. Two fallbacks are narrowed so a secret never travels to a server it was not made for:

- the config's ``token`` is used only for the config's own ``url`` (or when it names none);
- ``admin.token``, the platform-admin key a server's first start leaves in its data dir (``$TASKPLANE_DATA_DIR``,
  else the server's default, ``~/.local/share/taskplane``), is used only when this user may read it and the URL is
  a loopback address: it belongs to a server on this machine.
"""

from __future__ import annotations

import ipaddress
import json
import os
import tomllib
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from taskplane.config import default_data_dir
from taskplane.errors import InvalidRequestError

DEFAULT_URL = "http://127.0.0.1:8420"
URL_ENV = "TASKPLANE_URL"
TOKEN_ENV = "TASKPLANE_TOKEN"  # noqa: S105 - the name of a variable, not a secret
CONFIG_ENV = "TASKPLANE_CLIENT_CONFIG"
DATA_DIR_ENV = "TASKPLANE_DATA_DIR"
ADMIN_TOKEN_FILE = "admin.token"  # noqa: S105 - a file name


@dataclass(frozen=True, slots=True)
class ClientConfig:
    """The client config file's settings; ``None`` where the file says nothing."""

    url: str | None = None
    token: str | None = None


@dataclass(frozen=True, slots=True)
class Credentials:
    """The server to talk to and the token to send; ``source`` says where the token came from (for messages)."""

    url: str
    token: str | None
    source: str  # "argument", "$TASKPLANE_TOKEN", a file's path, or "none"


def normalize_url(url: str) -> str:
    """The URL as clients use it: without a trailing slash."""
    return url.strip().rstrip("/")


def client_config_path() -> Path:
    """``$TASKPLANE_CLIENT_CONFIG``, else ``$XDG_CONFIG_HOME/taskplane/client.toml`` (``~/.config/...``)."""
    given = os.environ.get(CONFIG_ENV)
    if given:
        return Path(given).expanduser()
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "taskplane" / "client.toml"


def load_client_config(path: Path | None = None) -> ClientConfig:
    """Read the client config; a missing file is an empty config, an unreadable one an ``InvalidRequestError``."""
    path = path or client_config_path()
    try:
        with path.open("rb") as fh:
            doc = tomllib.load(fh)
    except FileNotFoundError:
        return ClientConfig()
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise InvalidRequestError(f"cannot read the client config {path}: {exc}", code="invalid_client_config") from exc
    values: dict[str, str | None] = {"url": None, "token": None}
    for key in values:
        value = doc.get(key)
        if value is not None and not isinstance(value, str):
            raise InvalidRequestError(f"{path}: {key} must be a string", code="invalid_client_config")
        if value is not None:
            values[key] = value.strip() or None
    return ClientConfig(url=values["url"], token=values["token"])


def save_client_config(config: ClientConfig, path: Path | None = None) -> Path:
    """Write the client config, mode 0600 (its directory, when created, 0700); returns the path written.

    The file is replaced in one rename, so a reader sees the old config or the new one, never a part.
    """
    path = path or client_config_path()
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    # JSON strings are valid TOML basic strings (the same escapes), so no TOML writer is needed.
    lines = [f"{key} = {json.dumps(value)}\n" for key, value in (("url", config.url), ("token", config.token)) if value]
    partial = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_NOFOLLOW", 0), 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write("# written by taskplane login\n" + "".join(lines))
        os.chmod(partial, 0o600)  # O_CREAT's mode does not apply to a leftover file
        os.replace(partial, path)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    return path


def admin_token_path() -> Path:
    """``<data dir>/admin.token``: the data dir is ``$TASKPLANE_DATA_DIR``, else the server's default."""
    given = os.environ.get(DATA_DIR_ENV)
    data_dir = Path(given).expanduser() if given else default_data_dir()
    return data_dir / ADMIN_TOKEN_FILE


def _read_secret(path: Path) -> str | None:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return None  # absent, or not this user's to read: the fallback does not apply
    return text.strip() or None


def is_loopback_url(url: str) -> bool:
    """Tell whether ``url`` names this machine (``localhost``, 127.0.0.0/8, ``::1``)."""
    host = urlsplit(url).hostname or ""
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def resolve_url(url: str | None = None, config: ClientConfig | None = None) -> str:
    """The server URL: ``url``, else ``$TASKPLANE_URL``, else the client config's, else the default."""
    given = url or os.environ.get(URL_ENV)
    if given:
        return normalize_url(given)
    config = config if config is not None else load_client_config()
    return normalize_url(config.url or DEFAULT_URL)


def resolve(url: str | None = None, token: str | None = None) -> Credentials:
    """The server and the token, by the order in the module docstring; files are read only when needed."""
    given_url = url or os.environ.get(URL_ENV)
    env_token = os.environ.get(TOKEN_ENV)
    config: ClientConfig | None = None
    if not given_url or not (token or env_token):
        config = load_client_config()
    found_url = resolve_url(given_url, config)
    if token:
        return Credentials(found_url, token, "argument")
    if env_token:
        return Credentials(found_url, env_token, f"${TOKEN_ENV}")
    if config is not None and config.token and (config.url is None or normalize_url(config.url) == found_url):
        return Credentials(found_url, config.token, str(client_config_path()))
    if is_loopback_url(found_url):
        path = admin_token_path()
        secret = _read_secret(path)
        if secret is not None:
            return Credentials(found_url, secret, str(path))
    return Credentials(found_url, None, "none")
