"""A failed task's exception shows the user's own frames first; the whole chain stays one attribute away.

A body runs under the scheduler, an executor and asyncio, so the traceback Python records
for its exception starts with a dozen of our frames before the user's line. When a task fails
for good the scheduler calls `keep_user_frames(exc)`:

* `exc.__notebook_orch_traceback__` keeps the full text (`traceback.format_exception`, a list
  of strings, every frame and the chained exceptions) for whoever debugs notebook_orch itself;
* `exc.__traceback__` (and that of each exception chained to it) starts at the first frame
  that is neither ours nor the standard library's: the `%%task` cell (`<task ID>`, its lines
  numbered as in the cell) or the `@wf.task` function. A body that is itself a library
  function keeps that library's frames; an error with no frame but ours (an output that
  failed its `output_model`) keeps no frame: its message says it all.

The libraries that run bodies for us (pebble's process pool, Dask's workers) count as ours. A
body that failed in a worker process comes back with its traceback as text (pebble's
`RemoteTraceback`, the `__cause__`): its leading frames are cut from the text the same way.

Only leading frames go: what the user's code called (ours included) stays below it.
`without_our_frames(tb)` is the same cut for an exception we raise about a task
(`run[id]`'s TaskFailedError), which the IPython layer uses to show it.
"""
from __future__ import annotations

import os
import re
import sysconfig
import traceback
from types import TracebackType

__all__ = ["keep_user_frames", "without_our_frames", "is_ours"]

PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep
_STDLIB = tuple({os.path.abspath(p) + os.sep for p in (sysconfig.get_paths()["stdlib"],
                                                      sysconfig.get_paths()["platstdlib"])})


_RUNNERS = tuple(os.sep + os.path.join("site-packages", name) + os.sep for name in ("pebble", "distributed"))
_FRAME_LINE = re.compile(r'^  File "(?P<file>[^"]+)", line \d+')


def is_ours(filename: str) -> bool:
    """A file of this package, or of a library that runs bodies for us (a process pool, Dask)."""
    path = os.path.abspath(filename)
    return path.startswith(PACKAGE_DIR) or any(r in path for r in _RUNNERS)


def _stdlib(filename: str) -> bool:
    path = os.path.abspath(filename)
    return path.startswith(_STDLIB) and "site-packages" not in path


def keep_user_frames(exc: BaseException) -> BaseException:
    """Record the full traceback text on `exc`, then cut our leading frames from it and its chain (in place)."""
    exc.__notebook_orch_traceback__ = traceback.format_exception(exc)  # type: ignore[attr-defined]
    seen: set[int] = set()
    todo: list[BaseException | None] = [exc]
    while todo:
        e = todo.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        try:
            e.__traceback__ = _from_user_frame(e.__traceback__)
            if isinstance(getattr(e, "traceback", None), str):   # pebble's RemoteTraceback: a worker's text
                e.traceback = _text_from_user_frame(e.traceback)  # type: ignore[attr-defined]
        except (TypeError, AttributeError):  # pragma: no cover - an exception type that refuses it keeps its own
            pass
        todo += [e.__cause__, e.__context__]
    return exc


def without_our_frames(tb: TracebackType | None) -> TracebackType | None:
    """A copy of the traceback `tb` without the frames of this package (the others, in order)."""
    kept = [t for t in _entries(tb) if not is_ours(t.tb_frame.f_code.co_filename)]
    out: TracebackType | None = None
    for t in reversed(kept):
        out = TracebackType(out, t.tb_frame, t.tb_lasti, t.tb_lineno)
    return out


def _entries(tb: TracebackType | None) -> list[TracebackType]:
    out = []
    while tb is not None:
        out.append(tb)
        tb = tb.tb_next
    return out


def _text_from_user_frame(text: str) -> str:
    """A formatted traceback (`Traceback ...:` then `  File "...", line N, in f` entries) from its first user frame."""
    lines = text.splitlines(keepends=True)
    frames = [(i, m.group("file")) for i, line in enumerate(lines) if (m := _FRAME_LINE.match(line))]
    for pick in (lambda f: not is_ours(f) and not _stdlib(f), lambda f: not is_ours(f)):
        first = next((i for i, f in frames if pick(f)), None)
        if first is not None:
            return "".join(lines[:frames[0][0]] + lines[first:])
    return text


def _from_user_frame(tb: TracebackType | None) -> TracebackType | None:
    entries = _entries(tb)
    files = [t.tb_frame.f_code.co_filename for t in entries]
    for t, f in zip(entries, files):
        if not is_ours(f) and not _stdlib(f):
            return t
    for t, f in zip(entries, files):   # a stdlib function as the body: its frames are the body's
        if not is_ours(f):
            return t
    return None
