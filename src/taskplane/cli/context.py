"""What every command gets from the root: where the server is, the token, the output mode, and how to make clients.

``--url`` and ``--token`` (or ``$TASKPLANE_URL``, ``$TASKPLANE_TOKEN``) win; what they leave open comes from the
client config file, then a local server's ``admin.token`` (``sdk.credentials``), read when a command first makes a
client. The client factories are injected (``create_app``) so tests can point the CLI at an in-memory transport.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Protocol

import typer

from taskplane.sdk import AsyncClient, Client, credentials
from taskplane.sdk.credentials import Credentials

JsonFlag = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON (same as the global --json).")]


class ClientFactory(Protocol):
    """Makes a blocking client; ``Client`` itself is one."""

    def __call__(self, base_url: str | None = None, *, token: str | None = None) -> Client:
        """Return a client of the server at ``base_url``."""
        ...


class AsyncClientFactory(Protocol):
    """Makes an asyncio client; ``AsyncClient`` itself is one."""

    def __call__(self, base_url: str | None = None, *, token: str | None = None) -> AsyncClient:
        """Return a client of the server at ``base_url``."""
        ...


@dataclass(frozen=True, slots=True)
class CliContext:
    """The root options, shared by every command through ``typer.Context.obj``."""

    url: str | None
    token: str | None
    json: bool
    make_client: ClientFactory
    make_async_client: AsyncClientFactory

    def credentials(self) -> Credentials:
        """The server and token to use: the root options, else the client config, else a local admin key."""
        return credentials.resolve(self.url, self.token)

    def client(self) -> Client:
        """Return a blocking client of the configured server."""
        found = self.credentials()
        return self.make_client(found.url, token=found.token)

    def async_client(self) -> AsyncClient:
        """Return an asyncio client of the configured server."""
        found = self.credentials()
        return self.make_async_client(found.url, token=found.token)


def cli_context(ctx: typer.Context) -> CliContext:
    """Return the ``CliContext`` the root callback stored."""
    found = ctx.find_object(CliContext)
    if found is None:  # only when a command is invoked without the root group
        raise RuntimeError("taskplane commands must run under the taskplane root command")
    return found
