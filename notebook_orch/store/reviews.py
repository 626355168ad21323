"""Reviews as rows of the store: each asked or answered review of a run, so a resumed run asks only what is open.

A review is kept under the key `review:<fingerprint of the task>` in the `results` table (signed and
pickled like every output; one row per key, the newest wins): a dict with its `status` (pending,
approved, edited, rejected), the `draft` waiting (pending only), the accepted `value`, `feedback`,
`asked` / `answered` (time.time()), `run_id` and `task`. The next run of the same definition
(same fingerprint) reads it before the task runs: a pending draft is offered again without running
the task, an approved one is its output (`review.ReviewDesk.resume`). Rows are written in order on
one background thread, off the run's loop.
"""
from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from .recorder import Recorder

__all__ = ["wire", "KEY_PREFIX"]

KEY_PREFIX = "review:"
_pool: ThreadPoolExecutor | None = None     # one writer thread: a review's rows are written in the order given
_lock = threading.Lock()


def _writer() -> ThreadPoolExecutor:
    global _pool
    with _lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="notebook_orch-reviews")
        return _pool


def wire(recorder: Recorder, run: Any) -> tuple[Any, Any]:
    """(lookup, keep) for the run's ReviewDesk, reading and writing `recorder`'s store."""
    store, cache = recorder.store, recorder.cache
    workflow = cache.workflow

    def key(tid: str) -> str | None:
        fp = run.fingerprints.get(tid)
        return KEY_PREFIX + fp if fp else None

    def lookup(tid: str) -> dict[str, Any] | None:
        k = key(tid)
        if k is None or not cache.read or tid in cache.force:   # --no-cache / only= / from_=: run it again
            return None
        hit, rec, _ = store.get(k)
        return rec if hit and isinstance(rec, dict) else None

    def keep(tid: str, rec: dict[str, Any]) -> None:
        k = key(tid)
        if k is None:
            return
        store.pending[k] = (rec, {"task": tid, "workflow": workflow, "run_id": run.id, "created": rec["asked"] or 0.0,
                                  "duration": None})   # found at once by this process, before it is written
        _writer().submit(_put, store, k, rec, tid, workflow, run.id)

    return lookup, keep


def _put(store: Any, key: str, rec: dict[str, Any], tid: str, workflow: str, run_id: str) -> None:
    try:
        store.put(key, rec, task=tid, workflow=workflow, run_id=run_id)
    finally:
        held = store.pending.get(key)
        if held is not None and held[0] is rec:
            del store.pending[key]
