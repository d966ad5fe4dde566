"""The supervisor's journal: what it started, what ended and what the server acknowledged.

Appended with plain ``os.write`` of whole lines (the kernel keeps them when only the process dies), replayed by
the next supervisor, and compacted to the live and unacknowledged entries (temp file, fsync, rename).

    {"t": "epoch", "epoch": 7}                      highest fencing epoch seen
    {"t": "queue", "items": [[task_id, attempt]]}   accepted into the node's queue, waiting for room; one with
                                                    nothing after it never ran (its launch is not journaled)
    {"t": "intent", "items": [[task_id, attempt]]}  about to spawn; an intent with no start means "lost"
    {"t": "start", ...}  {"t": "exit", ...}         see ``protocol.py``
    {"t": "ack", "keys": [[task_id, attempt]]}      the server recorded these exits
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from taskplane.executors.local.protocol import attempt_key

Record = dict[str, Any]


@dataclass(slots=True)
class JournalState:
    """The replayed journal: the fencing epoch, attempts started and not exited, exits not acknowledged."""

    epoch: int = 0
    live: dict[str, Record] = field(default_factory=dict)
    exited: dict[str, Record] = field(default_factory=dict)
    intents: dict[str, tuple[str, int]] = field(default_factory=dict)  # spawned or not: nobody knows
    queued: dict[str, tuple[str, int]] = field(default_factory=dict)  # waiting in the queue: never spawned


def replay(lines: Iterable[bytes]) -> JournalState:
    """Fold journal lines into a ``JournalState``; a torn or garbled line (a crash mid-write) is skipped."""
    state = JournalState()
    for line in lines:
        try:
            rec = orjson.loads(line)
            kind = rec["t"]
        except (orjson.JSONDecodeError, KeyError, TypeError):
            continue
        if kind == "start":
            key = attempt_key(rec["task_id"], rec["attempt"])
            state.intents.pop(key, None)
            state.queued.pop(key, None)
            state.live[key] = rec
        elif kind == "exit":
            key = attempt_key(rec["task_id"], rec["attempt"])
            state.intents.pop(key, None)
            state.queued.pop(key, None)
            state.live.pop(key, None)
            state.exited[key] = rec
        elif kind == "intent":
            for task_id, attempt in rec["items"]:
                key = attempt_key(task_id, attempt)
                state.queued.pop(key, None)
                state.intents[key] = (task_id, attempt)
        elif kind == "queue":
            for task_id, attempt in rec["items"]:
                state.queued[attempt_key(task_id, attempt)] = (task_id, attempt)
        elif kind == "ack":
            for task_id, attempt in rec["keys"]:
                state.exited.pop(attempt_key(task_id, attempt), None)
        elif kind == "epoch":
            state.epoch = max(state.epoch, int(rec["epoch"]))
    return state


def encode_record(rec: Record) -> bytes:
    """One journal line."""
    return orjson.dumps(rec, option=orjson.OPT_APPEND_NEWLINE)


class Journal:
    """An append-only file of records, compacted when it grows past ``compact_bytes``."""

    def __init__(self, path: Path, compact_bytes: int = 4 << 20) -> None:
        self.path = path
        self._compact_bytes = compact_bytes
        self._threshold = compact_bytes
        self._fd = -1
        self.written = 0

    def load(self) -> JournalState:
        """Replay the file (missing means empty)."""
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return JournalState()
        return replay(data.splitlines())

    def open(self) -> None:
        """Open for appending."""
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)

    def append(self, data: bytes) -> None:
        """Append already-encoded lines with one write (short writes are retried)."""
        view = memoryview(data)
        while view:
            n = os.write(self._fd, view)
            view = view[n:]
        self.written += len(data)

    def wants_compaction(self) -> bool:
        """True when the file grew enough since the last compaction."""
        return self.written >= self._threshold

    def compact(self, state: JournalState) -> None:
        """Rewrite the file to just ``state``: temp file, fsync, rename, then append to the new file."""
        records: list[Record] = [{"t": "epoch", "epoch": state.epoch}]
        records.extend(state.live.values())
        records.extend(state.exited.values())
        if state.queued:
            records.append({"t": "queue", "items": [list(item) for item in state.queued.values()]})
        if state.intents:
            records.append({"t": "intent", "items": [list(item) for item in state.intents.values()]})
        data = b"".join(encode_record(rec) for rec in records)
        tmp = self.path.with_name(self.path.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, self.path)
        self.close()
        self.open()
        self.written = 0
        # Keep compaction amortized when the live set itself is large.
        self._threshold = max(self._compact_bytes, 2 * len(data))

    def close(self) -> None:
        """Close the file."""
        if self._fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = -1
