"""Request-scoped access to the platform's services."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from taskplane.services.access import Caller
from taskplane.services.platform import Platform
from taskplane.services.tasks import TaskService


def get_platform(request: Request) -> Platform:
    """The platform this app serves (set by ``create_app``)."""
    platform: Platform = request.app.state.platform
    return platform


def get_tasks(request: Request) -> TaskService:
    """The task service."""
    return get_platform(request).tasks


def get_caller(request: Request) -> Caller:
    """The authenticated caller the security middleware attached to this request."""
    caller: Caller = request.scope["state"]["caller"]
    return caller


PlatformDep = Annotated[Platform, Depends(get_platform)]
CallerDep = Annotated[Caller, Depends(get_caller)]
TasksDep = Annotated[TaskService, Depends(get_tasks)]
