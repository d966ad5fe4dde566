"""The client, what the API can raise and its HTTP status: where the executor meets lightkube and httpx2."""

from __future__ import annotations

from pathlib import Path

import httpx2
from lightkube import ApiError, AsyncClient
from lightkube.config.kubeconfig import KubeConfig
from lightkube.core.exceptions import ConfigError

from taskplane.errors import UnavailableError

API_ERRORS = (ApiError, httpx2.HTTPError, OSError)
"""An API call failed: a ``Status`` answer (``ApiError``), a transport failure, or the socket underneath."""


def status_code(exc: BaseException) -> int | None:
    """The HTTP status of a failed API call, or ``None`` when no answer came."""
    if isinstance(exc, ApiError):
        return exc.status.code
    if isinstance(exc, httpx2.HTTPStatusError):
        return exc.response.status_code
    return None


def connect(kubeconfig: Path | None, context: str | None) -> AsyncClient:
    """A client from ``kubeconfig`` (``None``: in-cluster service account, else ``$KUBECONFIG``/``~/.kube/config``).

    No request is made here: an unreachable server shows at the first call. ``UnavailableError`` when no usable
    configuration is found.
    """
    try:
        config = KubeConfig.from_file(kubeconfig) if kubeconfig is not None else KubeConfig.from_env()
        single = config.get(context_name=context)
        if single is None:
            raise ConfigError(
                f"no context {context!r} in the kubeconfig" if context else "the kubeconfig has no context"
            )
        return AsyncClient(single, field_manager="taskplane", timeout=httpx2.Timeout(10.0))
    except (ConfigError, OSError, ValueError) as exc:
        raise UnavailableError(f"no usable Kubernetes configuration: {exc}") from exc
