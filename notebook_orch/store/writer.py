"""The store's writer thread: pickling, signing and SQLite writes happen here, never on the event loop.

One daemon thread per Store, started with the first run that records into it. Every
`POLL` seconds (at once when a recorder wakes it) it asks each live recorder for a `Batch`
— the recorder builds it from what its run did since the last one: it pickles outputs,
signs them, turns new events into a JSON chunk — and writes it in one transaction
(`executemany` for the rows). After a commit it waits `COMMIT_GAP` before the next, so a
run of thousands of tiny tasks makes at most ~100 commits a second, and a killed kernel
loses at most its last ~20 ms of outputs. A write that fails (another process holds the
lock past the busy timeout, a full disk) only delays this thread: the loop goes on, the
recorder keeps the outputs in memory and tries again `RETRY_AFTER` seconds later.

Runs start out writing on their own loop (`Recorder._tick`): while the store answers at once
and outputs are small, that is cheaper than a second thread fighting the loop for the GIL.
A lock held by another process, an output that pickles bigger than 1 MB, or any write error
hands the run over to this thread for good.

At interpreter exit everything queued is drained (at most `EXIT_WAIT` seconds, see
`notebook_orch.store`), so `python script.py` keeps what it computed.
"""
from __future__ import annotations

import threading
import time
from typing import Any

from .sqlite import _Unavailable

__all__ = ["COMMIT_GAP", "RETRY_AFTER", "Writer"]

POLL = 0.01          # seconds between looks at live recorders
COMMIT_GAP = 0.01    # seconds at least between two commits
RETRY_AFTER = 5.0    # seconds to wait after a failed write before the next attempt
RENEW_EVERY = 10.0   # seconds between lease renewals (leases last sqlite.LEASE_TTL)
EXIT_WAIT = 30.0     # seconds the interpreter waits at exit for queued writes



class Writer:
    """Collects batches from recorders and writes them (see the module docstring)."""

    def __init__(self, store: Any):
        self.store = store
        self._sources: list[Any] = []
        self._cv = threading.Condition()
        self._wake = threading.Event()
        self._cycle = 0          # completed passes over the sources
        self._quiet = True       # the last pass found nothing left to write
        self._thread: threading.Thread | None = None
        self._renewed = time.monotonic()

    def add(self, source: Any) -> None:
        with self._cv:
            self._sources.append(source)
            self._quiet = False
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="notebook_orch store writer",
                                                daemon=True)
                self._thread.start()
            self._cv.notify_all()

    def wake(self) -> None:
        self._wake.set()

    def drain(self, timeout: float | None = 10.0, retry: bool = False) -> bool:
        """Block until a full pass found nothing left to write (committed, or failed and kept in memory);
        `retry`: try what failed before at once instead of after RETRY_AFTER."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cv:
            if not self._sources:
                return True
            for src in self._sources:
                src.hurry = True           # events too, not only outputs
                if retry:
                    src.retry_at = 0.0
            start = self._cycle
            self._wake.set()
            while not (self._cycle > start + 1 and self._quiet) and self._sources:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return False
                self._cv.wait(0.05 if left is None else min(left, 0.05))
                self._wake.set()
            return True

    # ------------------------------------------------------------------ the thread
    def _run(self) -> None:
        while True:
            with self._cv:
                while not self._sources:
                    self._cv.wait()
                sources = list(self._sources)
            self._wake.wait(POLL)
            self._wake.clear()
            wrote, quiet = False, True
            now = time.monotonic()
            for src in sources:
                try:
                    wrote |= self._serve(src, now)
                except BaseException as exc:  # noqa: BLE001 - the thread must outlive any recorder bug
                    src.broken(exc)
                if not src.quiet():
                    quiet = False
            if time.monotonic() - self._renewed > RENEW_EVERY:
                self._renewed = time.monotonic()
                try:
                    self.store.renew_leases()
                except Exception:  # noqa: BLE001 - the next renewal may succeed; leases also end with us
                    pass
            with self._cv:
                self._sources = [s for s in self._sources if not s.done()]
                self._cycle += 1
                self._quiet = quiet
                self._cv.notify_all()
            if wrote:
                time.sleep(COMMIT_GAP)

    def _serve(self, src: Any, now: float) -> bool:
        if not src.due(now):
            return False
        batch = src.collect()
        if not batch:
            return False
        try:
            self.store.write(batch)
        except (_Unavailable, Exception) as exc:  # noqa: BLE001 - locked, disk full, anything: the loop goes on
            src.retry_at = time.monotonic() + RETRY_AFTER
            src.failed(batch, exc)
            return False
        src.committed(batch)
        return True
