"""Telling the user's Ctrl-C from a body that raises KeyboardInterrupt (or calls sys.exit()).

Design note. A body that raises SystemExit, KeyboardInterrupt or GeneratorExit fails its
attempt with `BodyExitError` in every executor (the run goes on, the kernel lives). But a
KeyboardInterrupt can also be the user's: Ctrl-C, or the kernel's stop button, while a
cell is blocked in `run.wait()`. Python delivers it in the main thread, wherever that
thread is, often inside an async body running on the loop. That one must still cancel the
run (SPEC §4), so it must not be mistaken for the body's.

No flag is kept: a KeyboardInterrupt raised by a signal handler has the handler's frame
innermost in its traceback. `watching()` (around a blocking wait) wraps the SIGINT handler
in `_on_sigint`, so a signalled interrupt carries that frame; a script's `wf.run()` runs
under `asyncio.run`, whose own handler (`Runner._on_sigint`) cancels the run at the first
Ctrl-C and raises at the second, with its frame innermost. `from_user(exc)` checks for
either. Anything else is the body's doing.
"""
from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from types import FrameType
from typing import Any

__all__ = ["from_user", "watching"]


def from_user(exc: BaseException) -> bool:
    """Whether `exc` is a KeyboardInterrupt delivered by a SIGINT handler (the user's), not raised by a body."""
    if not isinstance(exc, KeyboardInterrupt):
        return False
    tb = exc.__traceback__
    if tb is None:
        return False
    while tb.tb_next is not None:
        tb = tb.tb_next
    code = tb.tb_frame.f_code
    return code is _on_sigint.__code__ or (code.co_name == "_on_sigint" and code.co_filename.endswith("runners.py"))


def _on_sigint(signum: int, frame: FrameType | None) -> Any:
    """SIGINT while a run is waited for: the previous handler (which raises KeyboardInterrupt), from this frame."""
    previous = _previous[-1] if _previous else signal.default_int_handler
    if callable(previous):
        return previous(signum, frame)
    raise KeyboardInterrupt


_previous: list[Any] = []   # handlers replaced by the watching() blocks now open (innermost last)


@contextlib.contextmanager
def watching() -> Iterator[None]:
    """While the block runs, a KeyboardInterrupt from SIGINT is recognisable by `from_user` (main thread only;
    elsewhere no signal can arrive, and a handler that does not raise is left alone)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    current = signal.getsignal(signal.SIGINT)
    if current is _on_sigint or not callable(current):
        yield
        return
    _previous.append(current)
    signal.signal(signal.SIGINT, _on_sigint)
    try:
        yield
    finally:
        _previous.pop()
        if signal.getsignal(signal.SIGINT) is _on_sigint:
            signal.signal(signal.SIGINT, current)
