"""taskplane: a workflow execution platform.

The SDK is importable from the top: ``from taskplane import Client, AsyncClient``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from taskplane.sdk import AsyncClient, Client

__all__ = ["AsyncClient", "Client", "__version__"]


def __getattr__(name: str) -> Any:
    # Lazy, so importing a submodule (the supervisor, say) does not pull in httpx.
    if name in ("Client", "AsyncClient"):
        from taskplane import sdk

        return getattr(sdk, name)
    raise AttributeError(name)
