"""What every command gets from the root: where the server is, the output mode, and how to make clients.

The client factories are injected (``create_app``) so tests can point the CLI at an in-memory transport.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Protocol

import typer

from taskplane.sdk import AsyncClient, Client

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

    def client(self) -> Client:
        """Return a blocking client of the configured server."""
        return self.make_client(self.url, token=self.token)

    def async_client(self) -> AsyncClient:
        """Return an asyncio client of the configured server."""
        return self.make_async_client(self.url, token=self.token)


def cli_context(ctx: typer.Context) -> CliContext:
    """Return the ``CliContext`` the root callback stored."""
    found = ctx.find_object(CliContext)
    if found is None:  # only when a command is invoked without the root group
        raise RuntimeError("taskplane commands must run under the taskplane root command")
    return found
