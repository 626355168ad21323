"""Persistence, one package: results keyed by fingerprint, runs and their events, so finished work survives a crash.

Rooms, each knowing only those below it:

* `sqlite`      — the file: schema, signed rows, index, leases, listings. Knows nothing of `Run`.
* `sign`        — the per-user HMAC secret; a row that does not verify is never unpickled.
* `fingerprint` — what makes a stored result reusable.
* `cache`       — one run's fingerprints and the scheduler's `cache_lookup` hook (leases included).
* `writer`      — the thread that pickles, signs and writes, off the event loop.
* `recorder`    — follows one run's events and feeds the writer; never emits into the run.
* `load`        — a past run read back (`Run.load`) as a `RunState`.

`attach(workflow, graph, options)` wires a new run (used by `Workflow._launch`).
"""
from __future__ import annotations

import atexit
import os
import threading
from pathlib import Path
from typing import Any

from .cache import RunCache, cache_column
from .recorder import Recorder
from .sqlite import ALL_STORES, DEFAULT_DIR, DEFAULT_FILE, Store, StoreError, StoreWarning
from .writer import EXIT_WAIT

__all__ = [
    "DEFAULT_DIR",
    "DEFAULT_FILE",
    "Store",
    "StoreError",
    "StoreWarning",
    "attach",
    "cache_column",
    "open_store",
]

_STORES: dict[Path, Store] = {}   # most recently used last
_STORES_LOCK = threading.Lock()
_MAX_OPEN = 8                     # stores kept connected (2 connections each); the others reconnect on use


def open_store(path: str | os.PathLike[str] | None = None) -> Store:
    """The Store at `path` (default: .notebook_orch/store.sqlite under the current working directory).

    One Store object per file per process; the file is created on first use.
    """
    p = Path(path) if path is not None else Path.cwd() / DEFAULT_DIR / DEFAULT_FILE
    if p.is_dir():
        p = p / DEFAULT_FILE
    p = p.absolute()
    with _STORES_LOCK:
        st = _STORES.pop(p, None) or Store(p)
        _STORES[p] = st
        for old in list(_STORES.values())[:-_MAX_OPEN]:
            if old.drain(0):
                old.close()
        return st


@atexit.register
def _drain_at_exit() -> None:
    """`python script.py` keeps what it computed: write what is queued (one more try for what failed)."""
    for st in list(ALL_STORES):
        try:
            st.drain(EXIT_WAIT, retry=True)
        except Exception:  # noqa: BLE001, S110 - never an error at exit
            pass


def attach(workflow: Any, graph: Any, options: dict[str, Any]) -> Recorder | None:
    """The recorder (with its `.cache.lookup` hook) for a new run of `workflow`; None when its store is off."""
    st = getattr(workflow, "store", True)
    if st is False or st is None:
        return None
    store = st if isinstance(st, Store) else open_store(None if st is True else st)
    force: set[str] = set(options.get("only") or ())
    if options.get("from_"):
        force |= graph.descendants([options["from_"]])
    params = {**workflow.params, **(options.get("params") or {})}
    tasks = dict(zip(graph.ids, map(workflow.tasks.__getitem__, graph.ids)))
    cache = RunCache(store, workflow.name, graph, tasks, dict(workflow.agents),
                     params, workflow.namespace, read=bool(options.get("cache", True)), force=force)
    return Recorder(store, cache)
