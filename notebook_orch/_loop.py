"""Event-loop plumbing: nest-asyncio2 applied lazily, only when a blocking wait happens inside a running loop."""
from __future__ import annotations

import asyncio

def allow_nested(loop: asyncio.AbstractEventLoop) -> None:
    """Let `loop.run_until_complete` be called while `loop` is already running (a notebook cell)."""
    if getattr(loop, "_nest_patched", False):  # the mark nest-asyncio2 leaves on a loop it patched
        return
    import nest_asyncio2

    nest_asyncio2.apply(loop)


def running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None
