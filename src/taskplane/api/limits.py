"""Request body size limits, enforced before the body is parsed (413 problem JSON)."""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from taskplane.api.errors import problem

BATCH_PATH = "/platform/tasks/batch"


class BodyLimitMiddleware:
    """Refuses bodies over ``limit`` bytes (``batch_limit`` for ``POST /platform/tasks/batch`` only).

    With ``Content-Length`` the check is immediate; a chunked body is read up to the limit first and then
    replayed, so it cannot get around the limit either.
    """

    def __init__(self, app: ASGIApp, limit: int, batch_limit: int) -> None:
        self.app = app
        self.limit = limit
        self.batch_limit = batch_limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Check the body size, then pass the request on."""
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        limit = self.batch_limit if scope["path"] == BATCH_PATH else self.limit
        declared: int | None = None
        for name, value in scope.get("headers", ()):
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = None
        if declared is not None:
            if declared > limit:
                await self._refuse(scope, receive, send, limit)
                return
            await self.app(scope, receive, send)
            return
        # No length given: buffer (bounded), then replay.
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                break
            body = message.get("body", b"")
            size += len(body)
            if size > limit:
                await self._refuse(scope, receive, send, limit)
                return
            chunks.append(body)
            if not message.get("more_body", False):
                break
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    @staticmethod
    async def _refuse(scope: Scope, receive: Receive, send: Send, limit: int) -> None:
        response = problem(
            413, "payload_too_large", "Payload too large", f"request body exceeds the limit of {limit} bytes"
        )
        await response(scope, receive, send)
