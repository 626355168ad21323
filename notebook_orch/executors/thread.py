"""Sync bodies in worker threads: as many as the run's concurrency, never held by a body that was given up.

Design note. Python cannot stop a thread. When the awaitable of a running body is
cancelled (its timeout fired, or the run was cancelled), the body is *abandoned*: at that
instant, inside `cancel()` on the loop thread, its worker leaves the pool's count, so the
next body gets a fresh thread at once; the abandoned worker finishes the body in the
background, drops its result and ends. Each abandonment emits `abandoned` through the
attempt context (before the scheduler records the timeout or the cancel) and is counted in
`abandoned`; `adrift` counts those still running.

Workers are daemon threads and nothing joins them: an abandoned body never keeps
`python script.py` from exiting. (concurrent.futures joins its workers at exit and keeps a
worker busy with a timed-out body, which is why it is not used here.)

Capacity: `limit` workers at most (the run's concurrency, followed live through `resize`),
made on demand and kept idle until the run ends. The scheduler never has more bodies
running than its concurrency, so a body never waits in this pool's queue unless the run
has no limit (then `DEFAULT_LIMIT` workers) or the limit was just lowered.
"""
from __future__ import annotations

import asyncio
import contextvars
import threading
from collections import deque
from collections.abc import Callable, Mapping
from time import perf_counter
from typing import Any

from .. import capture
from . import DEFAULT_LIMIT, AbandonedInfo, call_body, exit_error, report_abandoned

__all__ = ["ThreadExecutor"]

# Item states; every change happens under the pool's lock.
_PENDING, _ASSIGNED, _RUNNING, _DONE, _CANCELLED, _ABANDONED = range(6)


class _Item:
    __slots__ = ("ctx", "fn", "fut", "kwargs", "loop", "started", "state")

    def __init__(self, fn: Callable[..., Any], kwargs: dict[str, Any], ctx: contextvars.Context,
                 fut: _BodyFuture, loop: asyncio.AbstractEventLoop):
        self.fn, self.kwargs, self.ctx, self.fut, self.loop = fn, kwargs, ctx, fut, loop
        self.state = _PENDING
        self.started = 0.0


class _BodyFuture(asyncio.Future[Any]):
    """The awaitable of one body: cancelling it frees the body's worker before cancel() returns."""

    _pool: ThreadExecutor
    _item: _Item

    def cancel(self, msg: Any = None) -> bool:
        if not super().cancel(msg):
            return False
        self._pool._cancelled(self._item)
        return True


class _Worker:
    __slots__ = ("item", "wake")

    def __init__(self, item: _Item | None):
        self.item = item
        self.wake = threading.Lock()   # held while idle; released by whoever hands it an item (or None: exit)
        self.wake.acquire()


class ThreadExecutor:
    """A pool of daemon worker threads that follows the run's concurrency and replaces abandoned workers."""

    def __init__(self, limit: int | None = None, options: Mapping[str, Any] | None = None):
        self.limit = max(1, limit or DEFAULT_LIMIT)   # workers in the pool at most
        self.abandoned = 0          # bodies given up while running (timed out or cancelled), ever
        self.adrift = 0             # of those, the ones whose thread is still running
        self.peak = 0               # most workers in the pool at once
        self._lock = threading.Lock()
        self._pending: deque[_Item] = deque()   # bodies waiting for a worker (only when the pool is full)
        self._idle: list[_Worker] = []
        self._live = 0              # workers in the pool: idle, or running a body that was not abandoned
        self._closed = False
        self._seq = 0

    # ------------------------------------------------------------ loop thread
    def submit(self, fn: Callable[..., Any], kwargs: dict[str, Any], *, task: str = "",
               resources: Mapping[str, int] | None = None) -> _BodyFuture:
        loop = asyncio.get_running_loop()
        fut = _BodyFuture(loop=loop)
        item = _Item(fn, kwargs, contextvars.copy_context(), fut, loop)   # the context carries output + attempt
        fut._pool, fut._item = self, item
        spawn = False
        with self._lock:
            if self._closed:
                raise RuntimeError("the run's thread pool is shut down")
            if self._idle:
                worker = self._idle.pop()
                item.state = _ASSIGNED
                worker.item = item
                worker.wake.release()
            elif self._live < self.limit:
                self._live += 1
                item.state = _ASSIGNED
                spawn = True
            else:
                self._pending.append(item)
        if spawn:
            self._spawn(item)
        return fut

    def resize(self, n: int | None) -> None:
        """Follow the run's concurrency: more workers for waiting bodies now, idle ones beyond `n` leave."""
        with self._lock:
            self.limit = max(1, n or DEFAULT_LIMIT)
            start = self._refill()
            while self._live > self.limit and self._idle:
                worker = self._idle.pop()
                worker.item = None
                self._live -= 1
                worker.wake.release()
        for item in start:
            self._spawn(item)

    def shutdown(self) -> None:
        """Idle workers end now, busy ones after their body; bodies still waiting are cancelled. Never blocks."""
        with self._lock:
            self._closed = True
            for worker in self._idle:
                worker.item = None
                self._live -= 1
                worker.wake.release()
            self._idle.clear()
            waiting = list(self._pending)
            self._pending.clear()
        for item in waiting:
            item.fut.cancel()

    def _cancelled(self, item: _Item) -> None:
        """The body's awaitable was cancelled: drop it if it has not started, else abandon its worker."""
        with self._lock:
            if item.state in (_PENDING, _ASSIGNED):
                item.state = _CANCELLED          # its worker (if any) skips it and stays in the pool
                return
            if item.state != _RUNNING:
                return
            item.state = _ABANDONED
            self.abandoned += 1
            self.adrift += 1
            self._live -= 1
            start = self._refill()
        for it in start:
            self._spawn(it)
        info: AbandonedInfo = {"executor": "thread", "running_s": perf_counter() - item.started, "killed": False}
        report_abandoned(item.ctx.get(capture.current_buffer), info)

    def _refill(self) -> list[_Item]:
        """Under the lock: waiting bodies that now fit, each counted for a new worker."""
        start = []
        while self._pending and self._live < self.limit:
            item = self._pending.popleft()
            if item.state == _PENDING:
                item.state = _ASSIGNED
                self._live += 1
                start.append(item)
        return start

    def _spawn(self, item: _Item) -> None:
        self._seq += 1
        worker = _Worker(item)
        self.peak = max(self.peak, self._live)
        try:
            threading.Thread(target=self._work, args=(worker,), name=f"notebook_orch-{self._seq}",
                             daemon=True).start()
        except RuntimeError as exc:   # "can't start new thread": the body fails, the pool's count stays right
            with self._lock:
                self._live -= 1
                item.state = _DONE
            if not item.fut.done():
                item.fut.set_exception(exc)

    # ------------------------------------------------------------ worker threads
    def _work(self, worker: _Worker) -> None:
        lock = self._lock
        item = worker.item
        while item is not None:
            with lock:
                run = item.state == _ASSIGNED
                if run:
                    item.state = _RUNNING
                    item.started = perf_counter()
            if run:
                try:
                    ok, value = True, item.ctx.run(call_body, item.fn, item.kwargs)
                except BaseException as exc:  # noqa: BLE001 - handed to the loop; SystemExit & co. become BodyExitError
                    ok, value = False, exit_error(exc)
                with lock:
                    abandoned = item.state == _ABANDONED
                    if abandoned:
                        self.adrift -= 1
                    else:
                        item.state = _DONE
                if abandoned:
                    return                       # no longer counted in the pool: this thread just ends
                try:
                    item.loop.call_soon_threadsafe(_resolve, item.fut, ok, value)
                except RuntimeError:             # the loop is closed: nobody waits for this result
                    pass
                value = None
            item = self._next(worker)

    def _next(self, worker: _Worker) -> _Item | None:
        """The next body for this worker, waiting idle if there is none; None: the worker leaves."""
        with self._lock:
            if self._closed or self._live > self.limit:
                self._live -= 1
                return None
            while self._pending:
                item = self._pending.popleft()
                if item.state == _PENDING:
                    item.state = _ASSIGNED
                    return item
            worker.item = None
            self._idle.append(worker)
        worker.wake.acquire()
        return worker.item


def _resolve(fut: asyncio.Future[Any], ok: bool, value: Any) -> None:
    if not fut.done():
        if ok:
            fut.set_result(value)
        else:
            fut.set_exception(value)
