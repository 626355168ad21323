"""Event-loop plumbing: nest-asyncio2 applied lazily, only when a blocking wait happens inside a running loop."""
from __future__ import annotations

import asyncio

_patched: set[int] = set()


def allow_nested(loop: asyncio.AbstractEventLoop) -> None:
    """Let `loop.run_until_complete` be called while `loop` is already running (a notebook cell)."""
    if id(loop) in _patched:
        return
    import nest_asyncio2

    nest_asyncio2.apply(loop)
    _patched.add(id(loop))


def running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None
