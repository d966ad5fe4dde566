"""Request-scoped access to the platform's services.

The dependencies are ``async def`` on purpose: FastAPI runs a plain ``def`` dependency in a worker thread,
one thread hop per dependency per request.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from taskplane.services.access import Caller
from taskplane.services.platform import Platform
from taskplane.services.tasks import TaskService


async def get_platform(request: Request) -> Platform:
    """The platform this app serves (set by ``create_app``)."""
    platform: Platform = request.app.state.platform
    return platform


async def get_tasks(request: Request) -> TaskService:
    """The task service."""
    platform: Platform = request.app.state.platform
    return platform.tasks


async def get_caller(request: Request) -> Caller:
    """The authenticated caller the security middleware attached to this request."""
    caller: Caller = request.scope["state"]["caller"]
    return caller


PlatformDep = Annotated[Platform, Depends(get_platform)]
CallerDep = Annotated[Caller, Depends(get_caller)]
TasksDep = Annotated[TaskService, Depends(get_tasks)]
