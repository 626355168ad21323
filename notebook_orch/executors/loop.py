"""The loop executor: a sync body called right on the event loop (for quick bodies that must see the loop's thread).

It has no capacity of its own and nothing to stop: a sync body on the loop blocks the loop
until it returns, so a timeout can only fire after it; an async body is awaited as returned.
"""
from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

__all__ = ["LoopExecutor"]


class LoopExecutor:
    """Calls the body on the loop thread; its awaitable (or its value) comes back as is."""

    def __init__(self, limit: int = 0, options: Mapping[str, Any] | None = None):
        pass

    def submit(self, fn: Callable[..., Any], kwargs: dict[str, Any], *, task: str = "",
               resources: Mapping[str, int] | None = None) -> Awaitable[Any]:
        result = fn(**kwargs)
        return result if inspect.isawaitable(result) else _done(result)

    def resize(self, n: int | None) -> None:
        pass

    def shutdown(self) -> None:
        pass


async def _done(value: Any) -> Any:
    return value
