r"""Copy a pod's log into the attempt's log file, following it while the container runs.

Kubernetes keeps one log per container with stdout and stderr interleaved: by default everything lands in
``<task_id>.<attempt>.stdout`` and the ``.stderr`` file stays empty. With ``split_log_streams`` (Kubernetes
1.32+, feature gate ``PodLogsQuerySplitStreams``) each stream is asked for (``stream=Stdout|Stderr``) and copied
to its own file. The copy is capped at ``limit`` bytes
(``truncated`` then) and resumable: after a restart the log is read again from its start and the bytes already
in the file are skipped.

Bytes, not lines: lightkube's ``log()`` decodes and re-splits lines (``\r`` becomes a newline), so the request
is built with lightkube's request builder and its response body streamed raw.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import httpx2
from lightkube import AsyncClient
from lightkube.resources.core_v1 import PodLog

from taskplane.executors.kubernetes.api import API_ERRORS, status_code

log = logging.getLogger("taskplane.executor.kubernetes")


class LogCopier:
    """One attempt's log file; ``copy`` may be called again after a failure or a restart."""

    def __init__(self, client: AsyncClient, path: Path, limit: int, stream: str | None = None) -> None:
        """Copy into ``path``; ``stream`` ``Stdout``/``Stderr`` asks for one stream (``None``: both, merged)."""
        self._client = client
        self.stream = stream
        self.path = path
        self.limit = limit
        self.truncated = False
        self.done = False

    def size(self) -> int:
        """Bytes in the file so far."""
        try:
            return self.path.stat().st_size
        except FileNotFoundError:
            return 0

    async def copy(self, namespace: str, pod: str, *, follow: bool) -> None:
        """Append what the file lacks of the pod's log; with ``follow``, until the container ends.

        Raises ``lightkube.ApiError`` (404: the pod is gone; 400: its container has not started) and
        ``httpx2.HTTPError`` on a broken connection; the caller decides whether to try again.
        """
        generic: Any = self._client._client  # lightkube's request builder, for a raw byte stream
        params = {"follow": follow or None, "stream": self.stream}
        br = generic.prepare_request("get", PodLog, name=pod, namespace=namespace, params=params)
        br.timeout = httpx2.Timeout(10.0, read=None)
        request = generic.build_adapter_request(br)
        response = await generic.send(request, stream=True)
        skip = self.size()
        try:
            if response.is_error:
                await response.aread()
                generic.raise_for_status(response)
            with self.path.open("ab") as out:
                written = skip
                async for chunk in response.aiter_bytes():
                    if skip:
                        dropped = min(skip, len(chunk))
                        chunk, skip = chunk[dropped:], skip - dropped
                    room = self.limit - written
                    if len(chunk) > room:
                        chunk, self.truncated = chunk[: max(0, room)], True
                    if chunk:
                        out.write(chunk)
                        out.flush()
                        written += len(chunk)
            self.done = True
        finally:
            with contextlib.suppress(Exception):
                await response.aclose()

    async def follow(
        self,
        namespace: str,
        pod: str,
        gone: Callable[[], bool],
        gate: asyncio.Semaphore,
        ended: Callable[[], bool] = lambda: True,
    ) -> None:
        """Copy with ``follow`` until the container ended, retrying broken streams; stop once the pod is gone.

        ``gate`` bounds the live streams (each holds a pooled connection of the API client). A stream can end
        cleanly while its container still runs (the kubelet restarted, a proxy closed it): unless ``ended`` (the
        container's end, as last seen) comes within ``RESUME_AFTER`` seconds, the log is followed again, the
        bytes already copied skipped.
        """
        async with gate:
            delay = 0.2
            while not self.done:
                try:
                    await self.copy(namespace, pod, follow=True)
                except API_ERRORS as exc:
                    code = status_code(exc)
                    if code == 404 or gone():
                        return  # the pod is gone, its log with it: what was copied stays
                    if code in (401, 403, 422):
                        log.warning("cannot copy the log of %s/%s: %s", namespace, pod, exc)
                        return
                    await asyncio.sleep(delay)  # 400: the container is not running yet; else a broken stream
                    delay = min(delay * 2, 2.0)
                    continue
                if not await _settles(ended, RESUME_AFTER) and not gone():
                    self.done = False  # the stream ended before the container: follow it again


RESUME_AFTER = 3.0  # seconds a clean end of a followed log may precede the container's end being seen


async def _settles(ended: Callable[[], bool], seconds: float) -> bool:
    """Wait up to ``seconds`` for ``ended()`` (polled, no request); its last value."""
    deadline = asyncio.get_running_loop().time() + seconds
    while not ended():
        if asyncio.get_running_loop().time() >= deadline:
            return False
        await asyncio.sleep(0.05)
    return True


class AttemptLogs:
    """One attempt's log files: followed live while its container runs, completed by one-shot reads at the end."""

    def __init__(self, client: AsyncClient, out: Path, err: Path, limit: int, *, split: bool) -> None:
        """Copies into ``out`` (and ``err`` with ``split``; else ``err`` is created empty)."""
        out.parent.mkdir(parents=True, exist_ok=True)
        err.touch()
        if split:
            self.copiers = [LogCopier(client, out, limit, "Stdout"), LogCopier(client, err, limit, "Stderr")]
        else:
            self.copiers = [LogCopier(client, out, limit)]
        self.tasks: list[asyncio.Task[None]] = []  # the live follows, set by the owner that runs them

    @property
    def truncated(self) -> bool:
        """A file reached the cap."""
        return any(c.truncated for c in self.copiers)

    def follows(
        self,
        namespace: str,
        pod: str,
        gone: Callable[[], bool],
        gate: asyncio.Semaphore,
        ended: Callable[[], bool] = lambda: True,
    ) -> list[Coroutine[None, None, None]]:
        """The live follows to run, one per file (``ended``: the container's end was seen)."""
        return [c.follow(namespace, pod, gone, gate, ended) for c in self.copiers]

    async def complete(self, namespace: str, pod: str | None, follow_wait: float, read_wait: float) -> None:
        """Let the live follows finish (``follow_wait`` at most), then read what is still missing once.

        A copy still waiting for a follower slot, too slow, or never begun reads the ended container's log once
        (``read_wait`` at most); ``pod`` ``None``: the pod is gone, nothing more can be read.
        """
        if self.tasks:
            with contextlib.suppress(BaseException):
                done = asyncio.gather(*self.tasks, return_exceptions=True)
                await asyncio.wait_for(asyncio.shield(done), follow_wait)
            for task in self.tasks:
                task.cancel()
        unfinished = [c for c in self.copiers if not c.done]
        if unfinished and pod is not None:
            with contextlib.suppress(*API_ERRORS, asyncio.TimeoutError):
                copies = (c.copy(namespace, pod, follow=False) for c in unfinished)
                await asyncio.wait_for(asyncio.gather(*copies), read_wait)
