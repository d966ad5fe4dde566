"""The wire between ``LocalExecutor`` and its supervisor: newline-delimited JSON objects over a Unix socket.

Client -> supervisor (each carries an ``id``; the supervisor answers ``{"op": "reply", "id", "ok", ...}``)::

    {"op": "hello", "epoch": 7, "capacity": {"millicpu", "memory", "gpu", "max_tasks"}}
                                                        -> reply with "running", "exited", "queued" ([[task_id,
                                                           attempt], ...] in start order), "cgroups", "warnings"
    {"op": "start", "epoch": 7, "launches": [...]}      one message per batch, queued in order and started as
                                                        they fit the capacity; idempotent per (task_id, attempt)
    {"op": "stop", "epoch": 7, "task_id", "attempt", "grace"}     a queued one leaves the queue: never_started
    {"op": "unqueue", "epoch": 7, "task_id", "attempt"}  only a queued one (never_started); else nothing
    {"op": "ack", "epoch": 7, "keys": [[task_id, attempt], ...]}
    {"op": "shutdown", "force": false}                  only when idle, or kill everything with force

Supervisor -> the current client (the latest accepted hello), coalesced per event-loop iteration::

    {"op": "events", "events": [<start record>, <exit record>, ...]}

Records are the journal's lines too (``journal.py``)::

    {"t": "start", "task_id", "attempt", "pid", "at", "boot", "res", "cg"}
        at: unix seconds; boot: [before, after] the spawn on CLOCK_BOOTTIME (pid reuse);
        res: [millicpu, memory, gpu] it holds, absent when best-effort; cg: its cgroup slot, if any
    {"t": "exit", "task_id", "attempt", "at", "started_at", "exit_code", "signal", "oom_killed", "spawn_error",
     "lost", "retryable", "peak_memory", "cpu_seconds", "log_truncated", "never_started"}
        never_started (only when true): it left the node's queue (stopped, or lost by a supervisor restart)
        before any process existed; exit_code and signal are null
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson

# asyncio streams refuse lines longer than their limit; a start batch of 1,000 launches can be megabytes.
READ_LIMIT = 1 << 30

HELLO = "hello"
START = "start"
STOP = "stop"
UNQUEUE = "unqueue"
ACK = "ack"
SHUTDOWN = "shutdown"
REPLY = "reply"
EVENTS = "events"

STALE_EPOCH = "stale_epoch"
BUSY = "busy"
BAD_REQUEST = "bad_request"


def encode(msg: Mapping[str, Any]) -> bytes:
    """One message as a line."""
    return orjson.dumps(msg, option=orjson.OPT_APPEND_NEWLINE)


def decode(line: bytes) -> dict[str, Any]:
    """One line as a message; raises ``ValueError`` when it is not a JSON object."""
    msg = orjson.loads(line)
    if not isinstance(msg, dict):
        raise ValueError("a message must be a JSON object")
    return msg


def attempt_key(task_id: str, attempt: int) -> str:
    """The supervisor's key for an attempt (same form as ``Launch.key``)."""
    return f"{task_id}.{attempt}"
