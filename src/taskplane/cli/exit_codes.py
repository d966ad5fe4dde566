"""Exit codes of the ``taskplane`` command.

======  ==========================================================================================================
code    meaning
======  ==========================================================================================================
0       success; for ``submit --wait`` and ``wait``: the task(s) succeeded
1       the API refused or failed the request, or the server could not be reached; ``wait``: some task did not
        succeed; ``submit --wait``: the task failed with no exit code (spawn error, lost node...); ``audit verify``:
        the audit chain is broken
2       bad usage: unknown flag, malformed value, missing argument
N       ``submit --wait``: the task's command exited with code N (1-255)
128+S   ``submit --wait``: the task's process was killed by signal S (the shell's convention)
124     ``submit --wait``: the task timed out (as ``timeout(1)`` reports it)
130     ``submit --wait``: the task was cancelled (128 + SIGINT, as if interrupted); also Ctrl-C while waiting
======  ==========================================================================================================

A task's own exit code can collide with 1, 2, 124 or 130; scripts that must tell them apart use ``--json`` and
read ``state`` and ``exit_code``.
"""

from __future__ import annotations

from taskplane.wire import TaskOut

OK = 0
API_ERROR = 1
USAGE = 2
TASK_FAILED = 1
CHAIN_BROKEN = 1
TIMED_OUT = 124
CANCELLED = 130


def _signal_of(task: TaskOut) -> int | None:
    if task.exit_code is not None and task.exit_code < 0:
        return -task.exit_code  # a negative exit code is how POSIX process APIs report a signal
    if task.attempts:
        return task.attempts[-1].signal
    return None


def exit_code_for(task: TaskOut) -> int:
    """Return the exit code ``submit --wait`` ends with for a finished ``task`` (see the module's table)."""
    if task.state == "succeeded":
        return OK
    if task.state == "timed_out":
        return TIMED_OUT
    if task.state == "cancelled":
        return CANCELLED
    signal = _signal_of(task)
    if signal is not None and 0 < signal < 128:
        return 128 + signal
    if task.exit_code is not None and 0 < task.exit_code < 256:
        return task.exit_code
    return TASK_FAILED
