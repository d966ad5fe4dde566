"""The server with ``state_backend = "redis"``: the same HTTP state API over Redis, audited."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

import redis

from tests.support.services import require_service

URL = "redis://127.0.0.1:6379/0"


def _reachable() -> None:
    try:
        redis.Redis.from_url(URL, socket_connect_timeout=2).ping()
    except redis.RedisError as exc:
        require_service("redis", f"cannot connect to {URL}: {exc}")


async def test_the_state_api_runs_on_redis(make_secured: Callable[..., Any]) -> None:
    _reachable()
    prefix = f"tptest{uuid.uuid4().hex[:8]}"
    async with make_secured(state_backend="redis", state_redis_url=URL, state_redis_prefix=prefix) as s:
        try:
            async with s.admin() as c:
                put = await c.put("/platform/state/jobs/1", json={"n": 1})
                assert put.status_code == 200, put.text
                swapped = await c.put(
                    "/platform/state/jobs/1", json={"n": 2}, headers={"If-Match": str(put.json()["revision"])}
                )
                assert swapped.status_code == 200, swapped.text
                assert (await c.put("/platform/state/jobs/1", json=3, headers={"If-Match": "1"})).status_code == 412
                assert (await c.get("/platform/state/jobs/1")).json()["value"] == {"n": 2}
                records = (await c.get("/platform/audit", params={"request_id": put.headers["x-request-id"]})).json()
                assert [r["action"] for r in records["items"]] == ["state.put"]
        finally:
            await s.platform.kv.purge_all()  # type: ignore[attr-defined]
    leftovers = redis.Redis.from_url(URL).keys(f"{prefix}*")
    assert leftovers == []
