"""Where a body runs: on the event loop (async), in a thread pool (sync, default), or in a process pool.

Results always come back to the loop as awaitables, so the scheduler treats every
executor alike. Pools belong to one run and are shut down without waiting when it ends
(a thread that outlives a timeout or a cancel cannot be killed; it is abandoned).
"""
from __future__ import annotations

import asyncio
import concurrent.futures as cf
import contextvars
import functools
import inspect
from collections.abc import Callable
from typing import Any

__all__ = ["Executors"]


class Executors:
    """Lazily created pools for one run."""

    def __init__(self, threads: int):
        self.threads = max(1, threads)
        self._thread: cf.ThreadPoolExecutor | None = None
        self._process: cf.ProcessPoolExecutor | None = None
        self.dask_client: Any = None  # a distributed.Client, set by the caller for executor='dask'

    def submit(self, kind: str, fn: Callable[..., Any], kwargs: dict[str, Any]) -> Any:
        """An awaitable for fn(**kwargs) on the given executor (call from the loop thread)."""
        if kind == "loop":
            result = fn(**kwargs)
            return result if inspect.isawaitable(result) else _done(result)
        loop = asyncio.get_running_loop()
        if kind == "thread":
            ctx = contextvars.copy_context()  # carries the output buffer into the thread
            return loop.run_in_executor(self._thread_pool(), functools.partial(ctx.run, _call_sync, fn, kwargs))
        if kind == "process":
            if self._process is None:
                self._process = cf.ProcessPoolExecutor()
            return loop.run_in_executor(self._process, functools.partial(_call_sync, fn, kwargs))
        if kind == "dask":
            if self.dask_client is None:
                from ..errors import DefinitionError
                raise DefinitionError("executor='dask' needs a distributed.Client: pass run(dask_client=...) "
                                      "or create one (distributed.Client()) before the run")
            fut = self.dask_client.submit(_call_sync, fn, kwargs, pure=False)
            return loop.run_in_executor(self._thread_pool(), fut.result)  # the loop never blocks on the cluster
        raise ValueError(f"unknown executor {kind!r}")

    def _thread_pool(self) -> cf.ThreadPoolExecutor:
        if self._thread is None:
            self._thread = cf.ThreadPoolExecutor(self.threads, thread_name_prefix="notebook_orch")
        return self._thread

    def shutdown(self) -> None:
        for pool in (self._thread, self._process):
            if pool is not None:
                pool.shutdown(wait=False, cancel_futures=True)
        self._thread = self._process = None


def _call_sync(fn: Callable[..., Any], kwargs: dict[str, Any]) -> Any:
    result = fn(**kwargs)
    if inspect.isawaitable(result):  # an async body sent to a thread or process: run it there
        return asyncio.run(_as_coroutine(result))
    return result


async def _as_coroutine(aw: Any) -> Any:
    return await aw


async def _done(value: Any) -> Any:
    return value

