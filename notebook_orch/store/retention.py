"""Retention: what the store keeps over months — `Store.prune()`, `Store.report()`, and the prune after every run.

`prune(keep_runs=100, older_than=None, workflow=None)` removes the runs beyond the last
`keep_runs` of each workflow and those started before `older_than` (never a run still going),
with their events, history rows and the outputs only they needed: outputs kept under the run
(`cache=False` tasks) and cached outputs they produced that no kept run used. A cache entry a
kept run used stays, whoever produced it. Then the space is given back: an incremental vacuum
(stores made by this release are created with `auto_vacuum=INCREMENTAL`; an older file is
converted by its first explicit prune, a one-time full `VACUUM`) and a WAL checkpoint that
truncates the `-wal` file.

After each run of a workflow with the store on, `schedule()` queues a prune of that workflow
(`Workflow(keep_runs=...)`, default 100) on the store's writer thread, so the loop never waits
for it; it costs one `count(*)` while the workflow has no more runs than it keeps.
"""
from __future__ import annotations

import os
import re
import sqlite3
import time
from typing import TYPE_CHECKING, Any

from ..errors import DefinitionError

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

    from .sqlite import Store

__all__ = ["DEFAULT_KEEP", "StoreReport", "parse_age", "prune", "report", "schedule"]

DEFAULT_KEEP = 100
_AGE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|sec|min|m|h|d|day|days|w|week|weeks)?\s*$")
_UNIT = {None: 86400.0, "s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600, "d": 86400, "day": 86400, "days": 86400,
         "w": 604800, "week": 604800, "weeks": 604800}


def parse_age(value: Any) -> float | None:
    """Seconds from '30d', '12h', '90min', '2w', a number of days, or a timedelta; None stays None."""
    if value is None:
        return None
    if hasattr(value, "total_seconds"):
        return float(value.total_seconds())
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value) * 86400.0
    m = _AGE.match(str(value))
    if not m:
        raise DefinitionError(f"older_than={value!r} is not an age; write e.g. '30d', '12h', '90min', '2w' "
                              f"(or a number of days)")
    return float(m.group(1)) * _UNIT[m.group(2)]


def size_on_disk(store: Store) -> int:
    total = 0
    for suffix in ("", "-wal"):
        try:
            total += os.stat(str(store.path) + suffix).st_size
        except OSError:
            pass
    return total


def prune(store: Store, keep_runs: int | None = DEFAULT_KEEP, older_than: Any = None, workflow: str | None = None,
          vacuum: bool = True, drain: bool = True) -> pd.Series:
    """See the module docstring. Returns runs_removed, outputs_removed, bytes_before, bytes_after."""
    import pandas as pd
    if keep_runs is not None and (not isinstance(keep_runs, int) or isinstance(keep_runs, bool) or keep_runs < 0):
        raise DefinitionError(f"keep_runs must be a whole number (0 or more) or None, got {keep_runs!r}")
    age = parse_age(older_than)
    if drain:   # (not on the writer thread itself: it would wait for its own pass)
        store.drain()
    before = size_on_disk(store)
    sql = "SELECT run_id, workflow, started, status, host, pid FROM runs"
    args: list[Any] = []
    if workflow is not None:
        sql += " WHERE workflow=?"
        args.append(workflow)
    sql += " ORDER BY workflow, started DESC"
    rows = store._read(lambda c: c.execute(sql, args).fetchall())
    cutoff = None if age is None else time.time() - age
    seen: dict[str, int] = {}
    drop: list[str] = []
    for run_id, wf, started, status, host, pid in rows:
        seen[wf] = seen.get(wf, 0) + 1
        if store.status_of(run_id, status, host, pid) == "running":
            continue   # a run still going is never pruned
        if (keep_runs is not None and seen[wf] > keep_runs) or (cutoff is not None and started < cutoff):
            drop.append(run_id)
    outputs = 0
    if drop:
        outputs = store._do(lambda c: _delete(c, drop), write=True)
        store._index = None   # rows went: re-read the index on the next lookup
    if vacuum:
        give_back(store, convert=True)
    elif drop:
        give_back(store, convert=False)
    return pd.Series({"runs_removed": len(drop), "outputs_removed": outputs, "bytes_before": before,
                      "bytes_after": size_on_disk(store)}, name="prune")


def _delete(c: sqlite3.Connection, drop: list[str]) -> int:
    """In one transaction: the runs `drop`, their events and history, the outputs only they needed."""
    c.execute("CREATE TEMP TABLE IF NOT EXISTS _drop (run_id TEXT PRIMARY KEY)")
    c.execute("DELETE FROM _drop")
    c.executemany("INSERT OR IGNORE INTO _drop VALUES (?)", [(r,) for r in drop])
    # the cache entries kept runs used (produced or reused): their events' fps maps
    c.execute("CREATE TEMP TABLE IF NOT EXISTS _used (fingerprint TEXT PRIMARY KEY)")
    c.execute("DELETE FROM _used")
    c.execute("INSERT OR IGNORE INTO _used SELECT j.value FROM events e, json_each(e.data, '$.fps') j "
              "WHERE e.run_id NOT IN (SELECT run_id FROM _drop) AND json_valid(e.data)")
    n = c.execute("DELETE FROM results WHERE run_id IN (SELECT run_id FROM _drop) AND (fingerprint LIKE 'run:%' "
                  "OR fingerprint NOT IN (SELECT fingerprint FROM _used))").rowcount
    for table in ("events", "history", "runs"):
        c.execute(f"DELETE FROM {table} WHERE run_id IN (SELECT run_id FROM _drop)")   # noqa: S608 - our names
    c.execute("DELETE FROM parts WHERE own NOT IN (SELECT json_extract(j.value, '$[0]') FROM history h, "
              "json_each(h.defs) j WHERE json_valid(h.defs))")
    if n:
        c.execute("INSERT INTO info (key, value) VALUES ('cleared', 1) "
                  "ON CONFLICT(key) DO UPDATE SET value = value + 1")   # other kernels re-read their index
    c.execute("DELETE FROM _drop")
    c.execute("DELETE FROM _used")
    return int(n)


def give_back(store: Store, convert: bool) -> None:
    """Return free pages to the file system: incremental vacuum (or, `convert`, a one-time VACUUM that switches an
    older file to incremental mode), then truncate the WAL."""
    c = store._w
    with c.lock:
        con = store._connect(c, check_file=True)
        mode = con.execute("PRAGMA auto_vacuum").fetchone()[0]
        if mode == 2:
            con.execute("PRAGMA incremental_vacuum")
        elif convert:
            con.execute("PRAGMA auto_vacuum=INCREMENTAL")
            con.execute("VACUUM")
        try:
            con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        except sqlite3.OperationalError:   # another kernel reads right now: the WAL shrinks at a later checkpoint
            pass


# ------------------------------------------------------------------------------------------ after each run
class _Job:
    """A one-off task for the store's writer thread (it follows the recorders' protocol: `collect` does the work)."""

    def __init__(self, fn: Any):
        self.fn = fn
        self.hurry = False
        self.retry_at = 0.0
        self._done = False

    def due(self, now: float) -> bool:
        return True

    def collect(self) -> None:
        try:
            self.fn()
        finally:
            self._done = True

    def done(self) -> bool:
        return self._done

    def quiet(self) -> bool:
        return self._done

    def committed(self, b: Any) -> None:  # pragma: no cover - collect() returns no batch
        pass

    def failed(self, b: Any, exc: BaseException) -> None:  # pragma: no cover
        self._done = True

    def broken(self, exc: BaseException) -> None:
        self._done = True   # a prune that failed is tried again after the next run


def schedule(store: Store, workflow: str, keep_runs: int) -> None:
    """After a run: prune the workflow's runs beyond `keep_runs` on the writer thread (never on the loop)."""
    def job() -> None:
        n = store._read(lambda c: c.execute("SELECT count(*) FROM runs WHERE workflow=?", (workflow,)).fetchone()[0])
        if n > keep_runs:
            prune(store, keep_runs, workflow=workflow, vacuum=False, drain=False)
    store.enqueue(_Job(job))


# ------------------------------------------------------------------------------------------ what is in it
class StoreReport:
    """What a store holds: `size_bytes` (file + WAL), `runs` (per workflow: runs, first, last), `outputs`
    (count and bytes), `biggest` (the largest stored outputs)."""

    def __init__(self, store: Store, top: int = 10):
        import pandas as pd
        store.drain()
        self.path = store.path
        self.size_bytes = size_on_disk(store)
        runs = store._read(lambda c: c.execute(
            "SELECT workflow, count(*), min(started), max(started) FROM runs GROUP BY workflow ORDER BY workflow"
        ).fetchall())
        self.runs = pd.DataFrame(runs, columns=["workflow", "runs", "first", "last"]).set_index("workflow")
        for col in ("first", "last"):
            self.runs[col] = pd.to_datetime(self.runs[col], unit="s")
        n, total = store._read(lambda c: c.execute("SELECT count(*), coalesce(sum(size), 0) FROM results").fetchone())
        self.outputs, self.outputs_bytes = int(n), int(total)
        events = store._read(lambda c: c.execute("SELECT coalesce(sum(length(data)), 0) FROM events").fetchone()[0])
        self.events_bytes = int(events)
        big = store._read(lambda c: c.execute(
            "SELECT task, workflow, run_id, size, created FROM results ORDER BY size DESC LIMIT ?", (top,)).fetchall())
        self.biggest = pd.DataFrame(big, columns=["task", "workflow", "run_id", "size_bytes", "created"])
        self.biggest["created"] = pd.to_datetime(self.biggest["created"], unit="s")

    def __repr__(self) -> str:
        return (f"store {self.path}: {_mb(self.size_bytes)} on disk; {int(self.runs['runs'].sum())} run(s) of "
                f"{len(self.runs)} workflow(s); {self.outputs} output(s), {_mb(self.outputs_bytes)}; events "
                f"{_mb(self.events_bytes)}. Prune with open_store().prune(keep_runs=N, older_than='30d') or "
                f"`%orch store prune --keep N --older-than 30d`.")

    def _repr_html_(self) -> str:
        import html
        return (f"<p>{html.escape(repr(self))}</p><p><b>Runs</b></p>{self.runs.to_html()}"
                f"<p><b>Biggest outputs</b></p>{self.biggest.to_html(index=False)}")


def report(store: Store, top: int = 10) -> StoreReport:
    return StoreReport(store, top)


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB" if n >= 1e5 else f"{n / 1e3:.1f} kB"
