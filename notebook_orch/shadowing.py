"""Task ids that shadow notebook globals: said when it happens, named both ways, with the fix.

Design note. A body's inputs are bound by name: a task of that name first, then a run
parameter, then a notebook global. So a task id equal to the name of a notebook function
or variable that a body reads replaces it, silently, in that body (the user's helper
`market_size()` became the planned step's text: `TypeError: 'str' object is not
callable`). Planned ids come from a model, so this recurs. `notes(wf, task)` says so when
a task is defined (`Workflow.add`: a `ShadowingWarning`; `%%task`: a note under the
confirmation): the new task's id shadows a global that other bodies read, or the new
body reads a name that is both a task and a global. `plan.apply()` renames a step whose
id is a notebook global (see `patterns/planner.py`).

Only a workflow that knows its notebook namespace (`Workflow(namespace=...)`, set by the
magics) is checked; a plain function's globals are its module's and never shadowed.
"""
from __future__ import annotations

import types
from collections.abc import Mapping
from typing import Any

__all__ = ["ShadowingWarning", "free_name", "is_user_global", "notes"]

_SHELL = frozenset({"In", "Out", "exit", "quit", "get_ipython", "open"})


class ShadowingWarning(UserWarning):
    """A task id is also the name of a notebook global that a task body reads: the body gets the task's output."""


def is_user_global(ns: Mapping[str, Any] | None, name: str) -> bool:
    """Whether `name` is a notebook global the user defined (not IPython's own, not a module, not `_x`)."""
    if not ns or name not in ns or name.startswith("_") or name in _SHELL:
        return False
    return not isinstance(ns[name], types.ModuleType)


def _what(value: Any) -> str:
    if isinstance(value, (types.FunctionType, types.BuiltinFunctionType)):
        return "function"
    if isinstance(value, type):
        return "class"
    return f"variable ({type(value).__name__})"


def free_name(name: str, taken: Any, suffix: str = "_step") -> str:
    """`name` + suffix (then suffix2, suffix3...) not in `taken` (a container of names)."""
    new, n = name + suffix, 1
    while new in taken:
        n += 1
        new = f"{name}{suffix}{n}"
    return new


def _shadows(tasks: Mapping[str, Any], ns: Mapping[str, Any], name: str) -> bool:
    """Whether task `name` hides a notebook global of that name: not when the global is that task or its own
    body (`@wf.task def base(): ...` leaves the Task `base` in the notebook, `wf.task(base)` the function, and
    `def scaled(base)` means the task)."""
    if not is_user_global(ns, name):
        return False
    task = tasks.get(name)
    value = ns[name]
    if value is task or (getattr(value, "id", None) == name and type(value) is type(task)):
        return False
    own = getattr(task, "fn", None)
    return own is None or (value is not own and getattr(value, "__wrapped__", None) is not own)


def notes(tasks: Mapping[str, Any], ns: Mapping[str, Any] | None, task: Any) -> list[str]:
    """What `task` (just added to `tasks`) shadows, one sentence each naming both sides and the fix."""
    if not ns:
        return []
    out = []
    tid = task.id
    if _shadows(tasks, ns, tid):
        readers = [t.id for t in tasks.values() if t.id != tid and tid in t.params]
        if readers:
            what = _what(ns[tid])
            out.append(
                f"task {tid!r} shadows the notebook {what} {tid!r}, which {_listing(readers)} read"
                f"{'s' if len(readers) == 1 else ''}: {'that body' if len(readers) == 1 else 'those bodies'} now "
                f"receive{'s' if len(readers) == 1 else ''} the task's output instead. Rename the task "
                f"(e.g. {free_name(tid, tasks)!r}) or the {what.split(' ')[0]}.")
    for p in (task.params if task.fn is not None else ()):   # a prompt's {placeholder} names a task on purpose
        if p != tid and p in tasks and _shadows(tasks, ns, p):
            what = _what(ns[p])
            out.append(
                f"task {tid!r} reads {p!r}, which is both a task and a notebook {what}: it receives the output of "
                f"task {p!r}, not the {what.split(' ')[0]}. Rename one of them (e.g. the task to "
                f"{free_name(p, tasks)!r}) if the body means the {what.split(' ')[0]}.")
    return out


def _listing(names: list[str]) -> str:
    shown = ", ".join(repr(n) for n in names[:5])
    return f"task {shown}" if len(names) == 1 else f"tasks {shown}" + (" …" if len(names) > 5 else "")
