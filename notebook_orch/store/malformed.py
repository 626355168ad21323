"""Malformed history rows: the `runs` and `events` rows are unsigned JSON, so one bad row must not break the listing.

Design note. Outputs are signed (`sign.py`) and a row that does not verify is a miss; the
rows that describe runs (`runs.counts`, `runs.meta`, the events chunks) are plain JSON that
anyone who can write the file can change, and that a crash, a disk error or another program
can leave cut or garbled. Reading them raised `JSONDecodeError` (a cut row), `RecursionError`
(a row nested thousands deep), `TypeError` / `KeyError` (a row of the wrong shape) from
`open_store().runs()` and `Run.load()`, so one row hid the whole history. Now:

* `runs()` lists a row that does not read as status `malformed` (counts 0) and warns once
  per row, naming it;
* `Run.load()` (the latest) skips malformed runs, with a warning, and loads the newest
  run that reads; `Run.load(run_id)` of a malformed run raises a `StoreError` that says
  what is wrong with it and that the other runs are fine.
"""
from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from ..errors import OrchError
from .sqlite import Store, StoreError, StoreWarning

__all__ = ["MALFORMED", "MalformedRunError", "listing_row", "load_readable", "warn_once"]

MALFORMED = "malformed"       # the status `runs()` shows for a row that does not read
T = TypeVar("T")
_warned: set[tuple[str, str]] = set()     # (store path, run id) already warned about


class MalformedRunError(StoreError):
    """A stored run's rows do not read (cut, garbled or hand-edited JSON); the other runs are unaffected."""


def describe(exc: BaseException) -> str:
    if isinstance(exc, RecursionError):
        return "its JSON is nested too deeply to read"
    text = str(exc)
    return f"{type(exc).__name__}: {text[:120]}" if text else type(exc).__name__


def warn_once(store: Store, run_id: str, exc: BaseException, what: str) -> None:
    key = (str(store.path), run_id)
    if key in _warned:
        return
    _warned.add(key)
    warnings.warn(StoreWarning(
        f"store {store.path}: the row of run {run_id!r} is malformed ({describe(exc)}); {what}. Rows describing "
        f"runs are not signed: a crash, a disk error or another program can leave one unreadable. The other "
        f"runs read normally."), stacklevel=4)


def listing_row(store: Store, row: Sequence[Any], build: Callable[[Sequence[Any]], dict[str, Any]]) -> dict[str, Any]:
    """`runs()`' row for one stored run (`row` starts with run id and workflow): `build(row)`, or a `malformed`
    row (with a warning) if it does not read."""
    run_id, workflow = row[0], row[1]
    try:
        return build(row)
    except OrchError:
        raise
    except Exception as exc:  # noqa: BLE001 - JSONDecodeError, RecursionError, TypeError...: any unreadable row
        warn_once(store, str(run_id), exc, "it is listed with status 'malformed'")
        import pandas as pd
        return {"run_id": run_id, "workflow": workflow if isinstance(workflow, str) else repr(workflow),
                "status": MALFORMED, "started": pd.NaT, "finished": pd.NaT, "duration_s": float("nan"),
                "tasks": 0, "succeeded": 0, "cached": 0, "failed": 0, "stored": 0}


def load_readable(store: Store, run_id: str | None, load: Callable[[Store, str | None], T]) -> T:
    """`load(store, run_id)`, turning an unreadable row into a MalformedRunError; for the latest run (None),
    the newest run whose rows read, each malformed one skipped with a warning."""
    if run_id is not None:
        try:
            return load(store, run_id)
        except OrchError:
            raise
        except Exception as exc:  # noqa: BLE001 - any unreadable row
            raise MalformedRunError(
                f"run {run_id!r} in store {store.path} cannot be read back: its stored rows are malformed "
                f"({describe(exc)}). The other runs are unaffected: list them with open_store().runs()."
            ) from None
    ids = store._read(lambda c: [r[0] for r in c.execute("SELECT run_id FROM runs ORDER BY started DESC")])
    if not ids:
        return load(store, None)            # the store's own "no runs yet" error
    for rid in ids:
        try:
            return load(store, rid)
        except OrchError:
            raise
        except Exception as exc:  # noqa: BLE001 - any unreadable row: the next older run
            warn_once(store, str(rid), exc, "Run.load() skipped it and loads the newest run that reads")
    raise MalformedRunError(f"none of the {len(ids)} runs in store {store.path} can be read back: their rows "
                            f"are malformed. Move the file aside to start a fresh store.")
