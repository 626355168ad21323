"""Sync bodies in worker processes (pebble's ProcessPool): a body that times out or is cancelled is killed.

Design note. concurrent.futures' ProcessPoolExecutor cannot stop a running call, so a hung
body would hold its worker for the rest of the session. pebble (maintained, pure Python)
stops the worker process when a running future is cancelled and starts a fresh one, which
is exactly "give the capacity back". The cancel happens inside `cancel()` of the body's
awaitable, on the loop thread, and emits `abandoned` (info `killed: True`) at once.

Workers: min(the run's concurrency, CPU count): processes are for CPU-bound bodies, and
more of them than cores only adds start-up cost. pebble cannot resize a live pool, so
`resize` to another size closes the pool gracefully (its bodies finish) and the next
submission opens one of the new size. Bodies, inputs and outputs must pickle. What a body
prints in its process travels back with its outcome and joins the task's output.
"""
from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from time import perf_counter
from typing import Any

from .. import capture
from ..errors import DefinitionError
from . import DEFAULT_LIMIT, PRINTED, AbandonedInfo, call_printing, report_abandoned

__all__ = ["ProcessExecutor"]


class _KillableFuture(asyncio.Future[Any]):
    """The loop's side of one pebble future: cancelling it kills the worker running the body."""

    _pool: ProcessExecutor
    _pf: Future[Any]
    _where: Any
    _t0: float

    def cancel(self, msg: Any = None) -> bool:
        if not super().cancel(msg):
            return False
        running = self._pf.running()
        self._pf.cancel()            # pebble stops the worker process of a running future
        if running:
            self._pool.abandoned += 1
            info: AbandonedInfo = {"executor": "process", "running_s": perf_counter() - self._t0, "killed": True}
            report_abandoned(self._where, info)
        return True


class ProcessExecutor:
    """A pebble ProcessPool per run; cancelled or timed-out bodies are killed, their worker replaced."""

    def __init__(self, limit: int | None = None, options: Mapping[str, Any] | None = None):
        self.workers = _size(limit)
        self.abandoned = 0          # running bodies killed (timed out or cancelled)
        self._pool: Any = None

    def submit(self, fn: Callable[..., Any], kwargs: dict[str, Any], *, task: str = "",
               resources: Mapping[str, int] | None = None) -> asyncio.Future[Any]:
        if self._pool is None:
            try:
                from pebble import ProcessPool
            except ModuleNotFoundError:
                raise DefinitionError("executor='process' needs pebble: pip install pebble") from None
            self._pool = ProcessPool(max_workers=self.workers)
        loop = asyncio.get_running_loop()
        pf = self._pool.schedule(call_printing, args=(fn, kwargs))
        fut = _KillableFuture(loop=loop)
        fut._pool, fut._pf, fut._where, fut._t0 = self, pf, capture.current_buffer.get(), perf_counter()

        def done(pf: Future[Any]) -> None:
            try:
                loop.call_soon_threadsafe(_copy, pf, fut)
            except RuntimeError:   # the loop is closed
                pass
        pf.add_done_callback(done)
        return fut

    def resize(self, n: int | None) -> None:
        size = _size(n)
        if size != self.workers:
            self.workers = size
            if self._pool is not None:
                old, self._pool = self._pool, None
                old.close()          # its bodies finish; new ones go to a pool of the new size

    def shutdown(self) -> None:
        if self._pool is not None:
            pool, self._pool = self._pool, None
            pool.stop()              # kills what is left; no join, so the loop never waits


def _size(limit: int | None) -> int:
    return max(1, min(limit or DEFAULT_LIMIT, os.cpu_count() or 1))


def _copy(pf: Future[Any], fut: _KillableFuture) -> None:
    if fut.done() or pf.cancelled():
        return
    exc = pf.exception()
    if exc is not None:
        capture.write(fut._where, exc.__dict__.pop(PRINTED, ""))
        fut.set_exception(exc)
    else:
        value, printed = pf.result()
        capture.write(fut._where, printed)
        fut.set_result(value)
