"""``LogSplitter``: turns conmon's ``k8s-file`` log of one container into the task's stdout and stderr files.

conmon writes every chunk of output as one line ``<RFC3339 time> <stdout|stderr> <F|P> <bytes>``: ``F`` ends a
line of the task's output, ``P`` is a part of one (no newline yet, or a line longer than conmon's buffer). conmon
keeps writing while the server is down, so nothing is lost across a restart: a new splitter re-reads the file
from its start into truncated stream files (the split is a pure function of the file). Each stream is capped at
``limit`` bytes; past it, output is dropped and ``truncated`` turns true. When conmon rotates the file (its own
``max-size``), the splitter finishes the old inode and follows the new one.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

READ_SIZE = 1 << 20


class LogSplitter:
    """Follows one container log file and appends each stream's bytes to its own file, up to ``limit``."""

    def __init__(self, source: Path, stdout: Path, stderr: Path, limit: int) -> None:
        """Truncate (or create) the two stream files; nothing is read until ``poll``."""
        self.source = source
        self.limit = limit
        self.truncated = False
        self._fd: int | None = None
        self._inode: int | None = None
        self._pending = b""  # an incomplete k8s-file line
        self._outs = {
            b"stdout": os.open(stdout, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600),
            b"stderr": os.open(stderr, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600),
        }
        self._sizes = dict.fromkeys(self._outs, 0)

    def poll(self) -> None:
        """Copy whatever conmon wrote since the last call."""
        if not self._outs:
            return
        try:
            st = os.stat(self.source)
        except FileNotFoundError:
            return
        if self._fd is not None and st.st_ino != self._inode:
            self._read_all()  # rotated: finish the old file, then follow the new one
            os.close(self._fd)
            self._fd = None
            self._pending = b""
        if self._fd is None:
            try:
                self._fd = os.open(self.source, os.O_RDONLY | os.O_CLOEXEC)
            except FileNotFoundError:
                return
            self._inode = os.fstat(self._fd).st_ino
        self._read_all()

    def close(self) -> None:
        """A last ``poll``, then release every descriptor (also when that poll fails: ``OSError`` is raised after)."""
        try:
            self.poll()
            if self._pending:
                self._line(self._pending)  # conmon is gone: an unterminated record is all there will be
                self._pending = b""
        finally:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None
            for fd in self._outs.values():
                with contextlib.suppress(OSError):
                    os.close(fd)
            self._outs = {}

    def _read_all(self) -> None:
        assert self._fd is not None
        while True:
            chunk = os.read(self._fd, READ_SIZE)
            if not chunk:
                return
            data = self._pending + chunk
            end = data.rfind(b"\n")
            if end < 0:
                self._pending = data
                continue
            self._pending = data[end + 1 :]
            for line in data[:end].split(b"\n"):
                self._line(line)

    def _line(self, line: bytes) -> None:
        parts = line.split(b" ", 3)
        if len(parts) < 3 or parts[1] not in self._outs:
            return
        content = parts[3] if len(parts) == 4 else b""
        if parts[2] == b"F":
            content += b"\n"
        self._write(parts[1], content)

    def _write(self, stream: bytes, content: bytes) -> None:
        room = self.limit - self._sizes[stream]
        if len(content) > room:
            self.truncated = True
            content = content[: max(0, room)]
        if content:
            os.write(self._outs[stream], content)
            self._sizes[stream] += len(content)
