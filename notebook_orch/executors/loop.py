"""The loop executor: a sync body called right on the event loop (for quick bodies that must see the loop's thread).

It has no capacity of its own and nothing to stop: a sync body on the loop blocks the loop
until it returns, so its timeout cannot fire while it runs; the scheduler measures it and
fails an attempt that overran its timeout (its result is dropped). An async body is awaited
as returned; a generator is materialised (`executors.lazy`): a sync one at once, an async
one under the attempt's timeout.
"""
from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from . import exit_error, lazy

__all__ = ["LoopExecutor"]


class LoopExecutor:
    """Calls the body on the loop thread; its awaitable (or its value) comes back as is."""

    def __init__(self, limit: int = 0, options: Mapping[str, Any] | None = None):
        pass

    def submit(self, fn: Callable[..., Any], kwargs: dict[str, Any], *, task: str = "",
               resources: Mapping[str, int] | None = None) -> Awaitable[Any]:
        try:
            result = fn(**kwargs)
        except (SystemExit, GeneratorExit) as exc:   # (a KeyboardInterrupt may be the user's: the scheduler decides)
            raise exit_error(exc) from exc
        if inspect.isawaitable(result):
            return result
        if lazy.is_async_gen(result):
            return lazy.collect(result)
        return _done(lazy.materialise(result))

    def resize(self, n: int | None) -> None:
        pass

    def shutdown(self) -> None:
        pass


async def _done(value: Any) -> Any:
    return value
