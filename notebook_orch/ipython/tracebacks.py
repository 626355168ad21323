"""How IPython shows `run[id]`'s TaskFailedError: the user's frames first, none of ours (registered at %load_ext).

The failed task's own exception (the `__cause__`) already starts at the user's frame
(`notebook_orch.tracebacks`); what is left is the frame of `Run.__getitem__` that raised the
TaskFailedError, the last one, which IPython's `__tracebackhide__` never hides. So the class
gets a `_render_traceback_` (IPython's hook for exceptions that format themselves) that hands
IPython's own formatter the traceback without our frames: the cause with the cell's lines,
then `Cell In[N] ----> run['boom']`, then the message. When the task failed on an error of ours
(no line of the user's to show) the message alone is shown. The core class knows nothing of this.
"""
from __future__ import annotations

import traceback
from typing import Any

from ..errors import OrchError, TaskFailedError
from ..tracebacks import without_our_frames

__all__ = ["register", "unregister", "render"]


def render(exc: BaseException, shell: Any = None) -> list[str]:
    """IPython's structured traceback of `exc` without this package's frames (plain text without a shell).

    A task that failed on an error of ours (an output that did not validate, a timeout) has no
    line of the user's to show: then the message alone, as for every other error we raise."""
    if isinstance(exc.__cause__, OrchError) or exc.__cause__ is None:
        return [f"{type(exc).__name__}: {exc}"]
    if shell is None:
        from IPython import get_ipython
        shell = get_ipython()
    tb = without_our_frames(exc.__traceback__)
    if shell is None:
        return "".join(traceback.format_exception(type(exc), exc, tb)).splitlines()
    return shell.InteractiveTB.structured_traceback(type(exc), exc, tb)


def _render_traceback_(self: TaskFailedError) -> list[str]:
    return render(self)


def register(shell: Any) -> None:
    TaskFailedError._render_traceback_ = _render_traceback_  # type: ignore[attr-defined]


def unregister(shell: Any) -> None:
    if "_render_traceback_" in TaskFailedError.__dict__:
        del TaskFailedError._render_traceback_  # type: ignore[attr-defined]
