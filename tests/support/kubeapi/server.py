"""Serve a ``KubeApiDouble`` over real HTTP on loopback (uvicorn in a thread), with a kubeconfig file for it.

The double's loop is the server thread's: fault injection from the test thread goes through ``call``, which runs
a function on that loop and returns its result.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import orjson
import uvicorn

from tests.support.kubeapi import KubeApiDouble, kubeconfig_dict

T = TypeVar("T")


def write_kubeconfig(path: Path, server: str, *, context: str = "double", token: str = "double-token") -> Path:
    """A kubeconfig with one cluster, user and context (JSON is valid YAML)."""
    path.write_bytes(orjson.dumps(kubeconfig_dict(server, context=context, token=token)))
    return path


class ServedDouble:
    """A running loopback server over a double; ``url``, ``kubeconfig`` and ``call``."""

    def __init__(self, double: KubeApiDouble, server: uvicorn.Server, port: int, kubeconfig: Path) -> None:
        self.double = double
        self.server = server
        self.port = port
        self.kubeconfig = kubeconfig
        self.loop: asyncio.AbstractEventLoop | None = None

    @property
    def url(self) -> str:
        """The API server's base URL."""
        return f"http://127.0.0.1:{self.port}"

    def call(self, fn: Callable[[], T], timeout: float = 10.0) -> T:
        """Run ``fn`` on the double's loop (thread-safe access to its store and cluster)."""
        assert self.loop is not None
        future: concurrent.futures.Future[T] = concurrent.futures.Future()

        def run() -> None:
            try:
                future.set_result(fn())
            except BaseException as exc:  # handed back to the caller
                future.set_exception(exc)

        self.loop.call_soon_threadsafe(run)
        return future.result(timeout)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def serve_in_thread(double: KubeApiDouble, kubeconfig: Path) -> Iterator[ServedDouble]:
    """Serve ``double`` on 127.0.0.1 until the block ends; writes ``kubeconfig`` pointing at it."""
    port = _free_port()
    config = uvicorn.Config(double.app, host="127.0.0.1", port=port, log_level="warning", lifespan="on")
    server = uvicorn.Server(config)
    served = ServedDouble(double, server, port, write_kubeconfig(kubeconfig, f"http://127.0.0.1:{port}"))

    def run() -> None:
        loop = asyncio.new_event_loop()
        served.loop = loop
        loop.run_until_complete(server.serve())
        loop.close()

    thread = threading.Thread(target=run, name="kubeapi-double", daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the Kubernetes API double did not start")
        time.sleep(0.01)
    try:
        yield served
    finally:
        server.should_exit = True
        thread.join(10)
