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

Ending. pebble's `stop()` only marks a pool stopped: its workers (non-daemon processes)
stay until someone joins the pool, and `multiprocessing` joins every live child at
interpreter exit, so a worker left waiting kept `python script.py` from exiting (one run
in six after a timeout). A pool we stop or close is therefore joined by a daemon thread of
its own (workers stopped: SIGTERM, then SIGKILL after pebble's grace), never on the loop;
and at exit, before multiprocessing's own hook, `_reap` waits a little for those joins and
kills whatever worker is still alive.
"""
from __future__ import annotations

import asyncio
import atexit
import os
import threading
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
                _join_later(old)

    def shutdown(self) -> None:
        if self._pool is not None:
            pool, self._pool = self._pool, None
            pool.stop()              # kills what is left; joined in a thread, so the loop never waits
            _join_later(pool)


_joining: dict[Any, threading.Thread] = {}   # pools being joined -> the daemon thread joining them
_reaper = False


def _join_later(pool: Any) -> None:
    """Join a stopped or closed pool in a daemon thread (its workers end); `_reap` finishes the job at exit."""
    global _reaper
    if not _reaper:   # registered after pebble's and multiprocessing's hooks, so it runs before them
        atexit.register(_reap)
        _reaper = True

    def join() -> None:
        try:
            pool.join()
        except Exception:  # noqa: BLE001, S110 - a pool that broke has nothing left to join
            pass
        _joining.pop(pool, None)

    thread = threading.Thread(target=join, name="notebook_orch-pool-join", daemon=True)
    _joining[pool] = thread
    thread.start()


def _reap(grace: float = 5.0) -> None:
    """At interpreter exit: give the joins `grace` seconds, then kill the pebble workers still alive."""
    deadline = perf_counter() + grace
    for thread in list(_joining.values()):
        thread.join(max(0.0, deadline - perf_counter()))
    for pool in list(_joining):
        workers = getattr(getattr(getattr(pool, "_pool_manager", None), "worker_manager", None), "workers", {})
        for proc in list(workers.values()):
            try:
                proc.kill()
                proc.join(1)
            except Exception:  # noqa: BLE001, S110 - already gone
                pass


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
