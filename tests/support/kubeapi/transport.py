"""An httpx2 transport that runs an ASGI app in-process and **streams** its response body.

``httpx2.ASGITransport`` buffers the whole body before returning, so a watch or ``follow=true`` log would never
return. This one returns as soon as the app sends ``http.response.start`` and hands body chunks over a queue;
closing the response tells the app the client disconnected and cancels it.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, MutableMapping
from typing import Any

import httpx2

from tests.support.kubeapi.app import ASGIApp

_END = object()


class _Body(httpx2.AsyncByteStream):
    def __init__(self, queue: asyncio.Queue[object], task: asyncio.Task[None], closed: asyncio.Event) -> None:
        self._queue = queue
        self._task = task
        self._closed = closed

    async def __aiter__(self) -> AsyncIterator[bytes]:
        while True:
            item = await self._queue.get()
            if item is _END:
                return
            if isinstance(item, BaseException):
                raise httpx2.ReadError(str(item)) from item
            assert isinstance(item, bytes)
            yield item

    async def aclose(self) -> None:
        self._closed.set()
        if not self._task.done():
            self._task.cancel()
            with contextlib.suppress(BaseException):
                await self._task


class StreamingASGITransport(httpx2.AsyncBaseTransport):
    """Serve requests from ``app`` in this event loop, streaming response bodies."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        assert isinstance(request.stream, httpx2.AsyncByteStream)
        body = b"".join([chunk async for chunk in request.stream])
        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": request.method,
            "headers": [(k.lower(), v) for (k, v) in request.headers.raw],
            "scheme": request.url.scheme,
            "path": request.url.path,
            "raw_path": request.url.raw_path.split(b"?")[0],
            "query_string": request.url.query,
            "server": (request.url.host, request.url.port),
            "client": ("127.0.0.1", 123),
            "root_path": "",
        }
        loop = asyncio.get_running_loop()
        head: asyncio.Future[tuple[int, list[tuple[bytes, bytes]]]] = loop.create_future()
        queue: asyncio.Queue[object] = asyncio.Queue()
        closed = asyncio.Event()
        sent_body = False

        async def receive() -> dict[str, Any]:
            nonlocal sent_body
            if not sent_body:
                sent_body = True
                return {"type": "http.request", "body": body, "more_body": False}
            await closed.wait()
            return {"type": "http.disconnect"}

        async def send(message: MutableMapping[str, Any]) -> None:
            if message["type"] == "http.response.start":
                head.set_result((message["status"], list(message.get("headers", []))))
            elif message["type"] == "http.response.body":
                if message.get("body"):
                    queue.put_nowait(message["body"])
                if not message.get("more_body", False):
                    queue.put_nowait(_END)

        async def run() -> None:
            try:
                await self.app(scope, receive, send)
            except Exception as exc:
                if not head.done():
                    head.set_exception(exc)
                else:
                    queue.put_nowait(exc)
            finally:
                if not head.done():
                    head.set_exception(RuntimeError("the app sent no response"))
                queue.put_nowait(_END)

        task = loop.create_task(run())
        status, headers = await head
        return httpx2.Response(status, headers=headers, stream=_Body(queue, task, closed))
