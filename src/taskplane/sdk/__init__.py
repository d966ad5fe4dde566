"""Python clients of the taskplane HTTP API: ``Client`` (blocking) and ``AsyncClient`` (asyncio).

Both take and return the ``taskplane.wire`` models the server uses, and raise the ``taskplane.errors`` classes
the server's problem ``code`` names (``NotFoundError``, ``InvalidTransitionError``...); an unreachable server
raises ``UnavailableError``. ``wait`` raises ``WaitTimeoutError`` (a ``TimeoutError``) when its own timeout passes.

``client.state`` is the key-value store (``StateClient`` / ``AsyncStateClient``); ``Compare`` and ``Op`` build
its transactions.
"""

from taskplane.sdk.async_client import AsyncClient, AsyncStateClient
from taskplane.sdk.client import Client, StateClient
from taskplane.sdk.credentials import DEFAULT_URL
from taskplane.sdk.polling import WaitTimeoutError
from taskplane.sdk.state_calls import Compare, Op

__all__ = [
    "DEFAULT_URL",
    "AsyncClient",
    "AsyncStateClient",
    "Client",
    "Compare",
    "Op",
    "StateClient",
    "WaitTimeoutError",
]
