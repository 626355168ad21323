"""Route what task bodies print to their own buffers (run.output(id)), not into whichever cell is current.

While at least one run is live, sys.stdout and sys.stderr are wrapped by a router that
looks at a context variable: inside a task (its asyncio task, or the worker thread it
was handed to with a copied context) writes go to that task's buffer; everywhere else
they go to the stream that was there before.
"""
from __future__ import annotations

import contextvars
import sys
import threading
from typing import Any, TextIO

__all__ = ["current_buffer", "install", "uninstall", "write"]

# (outputs dict of the run, task id, scheduler, node, item, attempt) inside a task body; None elsewhere.
# The last four are the attempt context (notebook_orch.attempt), sharing this one variable.
current_buffer: contextvars.ContextVar[tuple[Any, ...] | None] = contextvars.ContextVar(
    "notebook_orch_output", default=None)

_lock = threading.Lock()
_users = 0


class _Router:
    """A text stream that writes to the current task's buffer, or to the stream it wraps."""

    def __init__(self, target: TextIO):
        self._target = target

    def write(self, s: str) -> int:
        where = current_buffer.get()
        if where is None:
            return self._target.write(s)
        write(where, s)
        return len(s)

    def writelines(self, lines: Any) -> None:
        for line in lines:
            self.write(line)

    def flush(self) -> None:
        if current_buffer.get() is None:
            self._target.flush()

    def __getattr__(self, name: str) -> Any:  # encoding, isatty, fileno, ipykernel's extras, ...
        return getattr(self._target, name)


def write(where: tuple[Any, ...] | None, s: str) -> None:
    """Add text to the output of the task `where` names (a `current_buffer` value): what it printed
    here, or elsewhere (a process, a Dask worker) and was handed back."""
    if where is None or not s:
        return
    outputs, task = where[0], where[1]
    buf = outputs.get(task)
    if buf is None:
        buf = outputs[task] = []
    buf.append(s)


def install() -> None:
    """Start routing (reference-counted: one call per live run)."""
    global _users
    with _lock:
        _users += 1
        if _users == 1:
            for name in ("stdout", "stderr"):
                stream = getattr(sys, name)
                if not isinstance(stream, _Router):
                    setattr(sys, name, _Router(stream))


def uninstall() -> None:
    """Stop routing when the last live run ends; leaves a stream someone else put there in place."""
    global _users
    with _lock:
        _users = max(0, _users - 1)
        if _users == 0:
            for name in ("stdout", "stderr"):
                stream = getattr(sys, name)
                if isinstance(stream, _Router):
                    setattr(sys, name, stream._target)
