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

Defining a large workflow grows the heap the same way, inside the user's own loop (`wf.task(...)`
100,000 times), where no block surrounds the work: a first full pass over the caller's data and four
more over the growing definitions cost 3-4 µs of the 12-16 µs per task measured at 100k tasks. So
every DEFINE_EVERY new tasks, `defining()` freezes again what is alive then (gc.freeze is O(1): it
splices the generations onto the permanent one), and the burst holds one count of `_active` until
`settle()`: `Workflow.validate()` calls it (every %%task cell and every run validates), and so does
the event loop's next turn when one runs (a notebook cell's definition loop ends with the cell).
The price, stated in docs/performance.md: cyclic garbage already unreachable at one of those
moments is collected after the burst, not during it; garbage made after it is collected as usual.

A map task that expands to MIN_TASKS items or more makes its run a large one from then on (a map of
100,000 items: 9 full passes, 1.2-1.4 s of a 3-4 s run, before). The run's events themselves stay out
of every pass by being plain tuples (`events.EventLog`).

Runs overlap (a background run and a foreground one): `_active` counts them (and a definition burst)
and only the last one out unfreezes. Work on fewer than MIN_TASKS tasks does not freeze: it has
nothing to gain.
"""
from __future__ import annotations

import asyncio
import contextlib
import gc
import threading
from collections.abc import Iterator

__all__ = ["DEFINE_EVERY", "MIN_TASKS", "defining", "enter", "leave", "paused", "settle"]

MIN_TASKS = 2_000
DEFINE_EVERY = 1_000   # new tasks between two freezes of a definition burst
_lock = threading.Lock()
_active = 0            # runs inside enter()/leave(), plus 1 while _defining; frozen while it is > 0
_defining = False      # a definition burst holds its count of _active until settle()


def enter() -> None:
    """A large run begins: freeze what is alive now (if no other run did)."""
    global _active
    with _lock:
        _active += 1
        if _active == 1:
            gc.freeze()


def leave() -> None:
    """A run that entered has ended: unfreeze once the last one has."""
    with _lock:
        _leave()


def _leave() -> None:   # under _lock
    global _active
    if _active == 0:
        return
    _active -= 1
    if _active == 0:
        gc.unfreeze()


def defining() -> None:
    """DEFINE_EVERY more tasks were defined: freeze what is alive now, and hold until settle() (or, under a
    running event loop, as a notebook cell runs, until the loop's next turn: the cell's end)."""
    global _active, _defining
    with _lock:
        if not _defining:
            _defining = True
            _active += 1
            try:
                asyncio.get_running_loop().call_soon(settle)
            except RuntimeError:   # a script: the next validate() or run settles
                pass
        gc.freeze()


def settle() -> None:
    """The definitions were validated: a definition burst's hold ends (unfreezing, unless a run holds)."""
    global _defining
    with _lock:
        if _defining:
            _defining = False
            _leave()


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
