"""While a large run is under way (or a large DAG is built), the garbage collector skips the objects that
existed when it began.

A run of 100,000 tasks holds several container objects per task that live as long as the run (the
definitions, the graph, the state's lists and dicts), and every full collection that the run's own
allocations trigger walks all of them again: measured, 4 full passes took 0.9-1.2 s of a 3.5-6.8 s
run (and the generation-1 passes most of the rest of 1.2-1.8 s). `gc.freeze()` moves every object
alive now into a permanent generation that collections skip; `gc.unfreeze()` hands them back when
the last such run ends, and the next collection sees them as before. Nothing is lost or kept: garbage
among the frozen objects is collected after the run rather than during it; objects made during the
run are collected as usual.

Building the DAG of a large workflow (`Workflow.validate`) allocates a few objects per task too:
`paused(n)` does the same around it (100k tasks: 6-8 -> 4.5 µs per task).

Runs overlap (a background run and a foreground one): `_active` counts them and only the last one
out unfreezes. Work on fewer than MIN_TASKS tasks does not freeze: it has nothing to gain.
"""
from __future__ import annotations

import contextlib
import gc
import threading
from collections.abc import Iterator

__all__ = ["MIN_TASKS", "enter", "leave", "paused"]

MIN_TASKS = 2_000
_lock = threading.Lock()
_active = 0            # runs inside enter()/leave(); the objects are frozen while it is > 0


def enter() -> None:
    """A large run begins: freeze what is alive now (if no other run did)."""
    global _active
    with _lock:
        _active += 1
        if _active == 1:
            gc.freeze()


def leave() -> None:
    """A run that entered has ended: unfreeze once the last one has."""
    global _active
    with _lock:
        if _active == 0:
            return
        _active -= 1
        if _active == 0:
            gc.unfreeze()


@contextlib.contextmanager
def paused(tasks: int) -> Iterator[None]:
    """Freeze for the duration of the block when it works on at least MIN_TASKS tasks."""
    if tasks < MIN_TASKS:
        yield
        return
    enter()
    try:
        yield
    finally:
        leave()
