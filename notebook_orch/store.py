"""SQLite store: task results keyed by fingerprint, plus runs and their events, so finished work survives a crash.

The file is `.notebook_orch/store.sqlite` under the current working directory (created on
first use: directory 0700, file 0600), opened in WAL mode with a busy timeout so several
kernels sharing a directory can read and write it at once. Every write is one
`BEGIN IMMEDIATE … COMMIT` transaction, so a crash leaves either the whole batch or none of it.

Tables: `results` (fingerprint -> pickled value + task, workflow, run id, created, duration),
`runs` (one row per run: status, times, counts, the DAG for `Run.load`), `events` (the
run's events in JSON chunks). A file that is not SQLite, belongs to another program or is
corrupt is renamed aside (`store.sqlite.corrupt-YYYYmmdd-HHMMSS`) with a `StoreWarning`,
and a fresh store is started; nothing is deleted.

Per-run integration (fingerprints, lookups, writes as tasks finish) lives in `notebook_orch._runstore`;
reading a past run back (`Run.load`) in `notebook_orch._storedrun`.
"""
from __future__ import annotations

import json
import os
import pickle
import socket
import sqlite3
import threading
import time
import warnings
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import OrchError, UnknownNameError

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

    from ._storedrun import StoredRun

__all__ = ["Store", "StoreWarning", "StoreError", "open_store", "cache_column", "DEFAULT_DIR", "DEFAULT_FILE"]

DEFAULT_DIR = ".notebook_orch"
DEFAULT_FILE = "store.sqlite"
APP_ID = 0x4E4F5243            # 'NORC' in PRAGMA application_id: marks the file as ours
SCHEMA_VERSION = 2             # PRAGMA user_version (1: development builds, not readable)
BUSY_TIMEOUT_MS = 2_000        # our transactions last milliseconds; a lock held longer is someone else's
INLINE_BYTES = 1024            # outputs whose pickle is at most this big are read with the index (no query per hit)
INLINE_TOTAL = 64 << 20        # ... up to this many bytes in all
_HEADER = b"SQLite format 3\x00"
_CORRUPT = {"SQLITE_CORRUPT", "SQLITE_NOTADB"}
_BUSY = {"SQLITE_BUSY", "SQLITE_LOCKED", "SQLITE_BUSY_SNAPSHOT", "SQLITE_BUSY_RECOVERY", "SQLITE_LOCKED_SHAREDCACHE"}

_SCHEMA: tuple[str, ...] = (
    # append-only: the newest row of a fingerprint wins; readers follow new rows by id (an id
    # freed by a delete may come back, so a read by id also checks the fingerprint)
    """CREATE TABLE IF NOT EXISTS results (
        id INTEGER PRIMARY KEY,
        fingerprint TEXT NOT NULL,   -- 32 hex digits, or 'run:<run id>:<task>' (an output not reusable)
        task TEXT NOT NULL, workflow TEXT NOT NULL, run_id TEXT NOT NULL,
        created REAL NOT NULL,       -- time.time() when written
        duration REAL,               -- seconds the task ran (NULL when unknown)
        size INTEGER NOT NULL,       -- bytes of the pickle
        value BLOB NOT NULL          -- pickle (protocol 5) of the output
    )""",
    """CREATE TABLE IF NOT EXISTS runs (
        run_id TEXT PRIMARY KEY, workflow TEXT NOT NULL,
        started REAL NOT NULL, finished REAL, status TEXT NOT NULL,
        tasks INTEGER NOT NULL, counts TEXT, host TEXT, pid INTEGER,
        meta TEXT NOT NULL           -- JSON: the DAG, task options (no bodies), limits, run options
    )""",
    """CREATE TABLE IF NOT EXISTS info (key TEXT PRIMARY KEY, value)""",  # 'cleared': bumped by every clear()
    """CREATE TABLE IF NOT EXISTS events (
        run_id TEXT NOT NULL, chunk INTEGER NOT NULL,
        data TEXT NOT NULL,          -- JSON {"events": [[t, task, kind, attempt, info], ...], "fps": {task: key}}
        PRIMARY KEY (run_id, chunk)
    )""",
)


class StoreWarning(UserWarning):
    """The store could not be used as is (moved aside, busy, unwritable); the run goes on."""


class StoreError(OrchError):
    """The store was asked for something it does not have (an unknown run id, a bad path)."""


class _Unavailable(Exception):
    """A write or read could not be done now (locked too long, disk full, unreadable); the caller keeps data in memory."""


def _errname(exc: BaseException) -> str:
    name = getattr(exc, "sqlite_errorname", "") or ""
    if not name:
        msg = str(exc).lower()
        if "not a database" in msg:
            return "SQLITE_NOTADB"
        if "malformed" in msg or "corrupt" in msg:
            return "SQLITE_CORRUPT"
        if "locked" in msg or "busy" in msg:
            return "SQLITE_BUSY"
    return name


class Store:
    """One SQLite store file. Thread-safe; several processes may share the file.

    Results that cannot be pickled, or could not be written, are kept in `memory` for the
    session (fingerprint -> (value, meta)) and found by `get` like stored ones.
    """

    def __init__(self, path: str | os.PathLike[str]):
        self.path = Path(path).absolute()
        self.memory: dict[str, tuple[Any, dict[str, Any]]] = {}   # fingerprint -> (value, meta): session only
        self.moved: list[Path] = []                                # files moved aside by this Store
        self._con: sqlite3.Connection | None = None
        self._ino: int | None = None                               # inode of the file the connection has open
        # fingerprint -> (row id, created, run id, pickle if small else None); None: not read yet
        self._index: dict[str, tuple[int, float, str, bytes | None]] | None = None
        self._inline = 0                                           # bytes of small pickles held in _index
        self._cleared: Any = None                                  # info 'cleared' at the last refresh
        self._index_id = 0                                         # highest results.id read into _index
        self._data_version = -1                                    # PRAGMA data_version at the last refresh
        self._checked = 0.0                                        # monotonic time of the last refresh
        self._moved_at = 0.0                                       # monotonic time of the last move aside
        self._lock = threading.RLock()

    def __repr__(self) -> str:
        return f"<Store {self.path}>"

    # ------------------------------------------------------------------ connection
    def _connect(self, check_file: bool = False) -> sqlite3.Connection:
        if self._con is not None:
            if not check_file:
                return self._con
            try:
                same = os.stat(self.path).st_ino == self._ino
            except OSError:
                same = False
            if same:
                return self._con
            self._con.close()  # the file was deleted or moved aside (maybe by another kernel): reopen
            self._con = None
        for attempt in range(3):
            try:
                self._con = self._open()
                ino = os.stat(self.path).st_ino
                if ino != self._ino:  # another file than the one the index describes
                    self._index = None
                self._ino = ino
                self._data_version = -1  # a new connection: compare from scratch (new rows are read by id)
                return self._con
            except sqlite3.DatabaseError as exc:
                if _errname(exc) not in _CORRUPT or attempt == 2 or not self._may_move():
                    raise _Unavailable(f"store {self.path} cannot be opened: {exc}") from exc
                self._move_aside(f"it is not a readable notebook_orch store ({exc})")
            except OSError as exc:
                raise _Unavailable(f"store {self.path} cannot be created: {exc}") from exc
        raise AssertionError("unreachable")

    def _open(self) -> sqlite3.Connection:
        d = self.path.parent
        if not d.exists():
            os.makedirs(d, mode=0o700, exist_ok=True)
        if self.path.exists():
            with open(self.path, "rb") as f:
                head = f.read(len(_HEADER))
            if head and head != _HEADER:
                self._move_aside("it is not a SQLite file")
        if not self.path.exists():
            try:
                os.close(os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
            except FileExistsError:  # another kernel just created it
                pass
        elif self.path.stat().st_mode & 0o077:
            try:
                os.chmod(self.path, 0o600)
            except OSError:
                pass
        con = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None,
                              check_same_thread=False)
        try:
            con.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
            con.execute("PRAGMA journal_mode=WAL")
            con.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: a killed process loses nothing committed
            con.execute("PRAGMA wal_autocheckpoint=8000")  # fewer, larger checkpoints (each one fsyncs)
            con.execute("BEGIN")  # one snapshot: another kernel may be creating the schema right now
            try:
                tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")}
                app = con.execute("PRAGMA application_id").fetchone()[0]
                version = con.execute("PRAGMA user_version").fetchone()[0]
            finally:
                con.execute("COMMIT")
            if tables and app != APP_ID:
                con.close()
                self._move_aside(f"it is a SQLite file of another program (tables {sorted(tables)[:5]})")
                return self._open()
            if tables and version != SCHEMA_VERSION:
                con.close()
                age = "a newer" if version > SCHEMA_VERSION else "an older"
                self._move_aside(f"it was written by {age} notebook_orch (schema {version}, this one reads "
                                 f"{SCHEMA_VERSION})")
                return self._open()
            if not tables:
                con.execute("BEGIN IMMEDIATE")
                try:
                    for stmt in _SCHEMA:
                        con.execute(stmt)
                    con.execute(f"PRAGMA application_id={APP_ID}")
                    con.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
                    con.execute("COMMIT")
                except BaseException:
                    con.execute("ROLLBACK")
                    raise
            con.execute("SELECT count(*) FROM runs").fetchone()  # touches a page: garbage fails here
        except BaseException:
            con.close()
            raise
        return con

    def _may_move(self) -> bool:
        """Corruption right after we moved a file aside means the trouble is elsewhere: stop renaming."""
        return not self.moved or time.monotonic() - self._moved_at > 60

    def _move_aside(self, why: str) -> None:
        """Rename the file (and its -wal/-shm) to '<name>.corrupt-<timestamp>' and warn; never deletes."""
        if self._con is not None:
            try:
                self._con.close()
            except sqlite3.Error:
                pass
            self._con = None
        stamp = time.strftime("%Y%m%d-%H%M%S")
        target = self.path.with_name(f"{self.path.name}.corrupt-{stamp}")
        n = 1
        while target.exists():
            n += 1
            target = self.path.with_name(f"{self.path.name}.corrupt-{stamp}-{n}")
        try:
            os.replace(self.path, target)
        except FileNotFoundError:  # another kernel moved it first
            return
        for suffix in ("-wal", "-shm"):
            side = self.path.with_name(self.path.name + suffix)
            if side.exists():
                try:
                    os.replace(side, target.with_name(target.name + suffix))
                except OSError:
                    pass
        self.moved.append(target)
        self._moved_at = time.monotonic()
        warnings.warn(StoreWarning(
            f"notebook_orch store {self.path} was moved aside to {target.name} because {why}. "
            f"A fresh store is used from now on; tasks whose outputs were only in the old file will run again. "
            f"Delete {target} when you no longer need it."), stacklevel=3)

    def _do(self, fn: Callable[[sqlite3.Connection], Any], *, write: bool) -> Any:
        """Run fn(connection) (inside BEGIN IMMEDIATE … COMMIT when writing); recover from corruption once."""
        with self._lock:
            for attempt in range(2):
                con = self._connect(check_file=write)
                try:
                    if not write:
                        return fn(con)
                    con.execute("BEGIN IMMEDIATE")
                    try:
                        out = fn(con)
                        con.execute("COMMIT")
                        return out
                    except BaseException:
                        if con.in_transaction:
                            con.execute("ROLLBACK")
                        raise
                except sqlite3.DatabaseError as exc:
                    name = _errname(exc)
                    if name in _CORRUPT and attempt == 0 and self._may_move():
                        self._move_aside(f"it is corrupt ({exc})")
                        continue
                    raise _Unavailable(f"store {self.path}: {exc}") from exc
            raise AssertionError("unreachable")

    def close(self) -> None:
        with self._lock:
            if self._con is not None:
                self._con.close()
                self._con = None

    # ------------------------------------------------------------------ results
    def may_have(self, fingerprint: str) -> bool:
        """False when the fingerprint is surely not stored. Answered from an in-memory index of the file,
        re-read (only the new rows) at most every 0.1 s and only when another connection has committed."""
        if fingerprint in self.memory:
            return True
        index = self._fresh_index()
        return index is None or fingerprint in index

    def _fresh_index(self) -> dict[str, tuple[int, float]] | None:
        now = time.monotonic()
        if self._index is None or now - self._checked > 0.1:
            self._checked = now
            try:
                self._do(self._refresh_index, write=False)
            except _Unavailable:
                pass
        return self._index

    def _refresh_index(self, c: sqlite3.Connection) -> None:
        """Read the rows added since the last refresh (all of them after a clear() anywhere)."""
        version = c.execute("PRAGMA data_version").fetchone()[0]
        if self._index is not None and version == self._data_version:
            return
        row = c.execute("SELECT value FROM info WHERE key='cleared'").fetchone()
        cleared = row[0] if row else None
        if self._index is None or cleared != self._cleared:
            self._index, self._index_id, self._inline = {}, 0, 0
        rows = c.execute(f"SELECT id, fingerprint, created, run_id, CASE WHEN size <= {INLINE_BYTES} THEN value END "
                         f"FROM results WHERE id > ? ORDER BY id", (self._index_id,)).fetchall()
        index = self._index
        for rid, fp, created, run_id, blob in rows:
            if blob is not None:
                if self._inline > INLINE_TOTAL:
                    blob = None
                else:
                    self._inline += len(blob)
            index[fp] = (rid, created, run_id, blob)
        if rows:
            self._index_id = rows[-1][0]
        self._data_version = version
        self._cleared = cleared

    def get(self, fingerprint: str, max_age: float | None = None) -> tuple[bool, Any, dict[str, Any]]:
        """(True, value, meta) for a stored result not older than max_age seconds, else (False, None, {})."""
        now = time.time()
        mem = self.memory.get(fingerprint)
        if mem is not None and (max_age is None or now - mem[1]["created"] <= max_age):
            return True, mem[0], {**mem[1], "where": "memory"}
        index = self._fresh_index()
        entry = index.get(fingerprint) if index is not None else None
        if entry is None or (max_age is not None and now - entry[1] > max_age):
            return False, None, {}
        if entry[3] is not None:  # a small output read with the index: no query
            return True, pickle.loads(entry[3]), {"run_id": entry[2], "created": entry[1], "where": "store"}
        try:
            row = self._do(lambda c: c.execute(
                "SELECT value, task, workflow, run_id, created, duration FROM results WHERE id=? AND fingerprint=?",
                (entry[0], fingerprint)).fetchone(), write=False)
        except _Unavailable:
            return False, None, {}
        if row is None:  # cleared or replaced by another kernel
            index.pop(fingerprint, None)
            return False, None, {}
        value = pickle.loads(row[0])  # errors propagate: the caller treats them as a miss and says why
        return True, value, {"task": row[1], "workflow": row[2], "run_id": row[3], "created": row[4],
                             "duration": row[5], "where": "store"}

    def put(self, fingerprint: str, value: Any, *, task: str, workflow: str = "", run_id: str = "",
            duration: float | None = None) -> bool:
        """Store one result now (one transaction). False when it could only be kept in memory."""
        meta = {"task": task, "workflow": workflow, "run_id": run_id, "created": time.time(), "duration": duration}
        try:
            blob = pickle.dumps(value, protocol=5)
        except Exception:  # noqa: BLE001 - unpicklable: this session only
            self.memory[fingerprint] = (value, meta)
            return False
        try:
            self.write_batch([(fingerprint, task, workflow, run_id, meta["created"], duration, len(blob), blob)])
        except _Unavailable:
            self.memory[fingerprint] = (value, meta)
            return False
        return True

    def write_batch(self, rows: Sequence[tuple[Any, ...]], run_id: str = "", chunk: str | None = None,
                    run_update: tuple[Any, ...] | None = None, run_insert: tuple[Any, ...] | None = None) -> None:
        """One transaction: result rows (fingerprint, task, workflow, run_id, created, duration, size, blob),
        an events chunk, and the run row insert/update. Raises _Unavailable when it cannot be written.

        Rows are appended (no random index pages to rewrite); an older row of the same fingerprint
        known to this process is deleted in the same transaction."""
        def write(c: sqlite3.Connection) -> None:
            if run_insert is not None:
                c.execute("INSERT OR IGNORE INTO runs (run_id, workflow, started, finished, status, tasks, counts, "
                          "host, pid, meta) VALUES (?,?,?,?,?,?,?,?,?,?)", run_insert)
            if rows:
                if self._index is None:
                    self._refresh_index(c)
                index = self._index or {}
                old = [(index[r[0]][0],) for r in rows if r[0] in index]
                if old:
                    c.executemany("DELETE FROM results WHERE id=?", old)
                c.executemany("INSERT INTO results (fingerprint, task, workflow, run_id, created, "
                              "duration, size, value) VALUES (?,?,?,?,?,?,?,?)", rows)
                if self._index is not None:  # one statement under our write lock: consecutive ids
                    last = c.execute("SELECT last_insert_rowid()").fetchone()[0]
                    first = last - len(rows) + 1
                    index = self._index
                    for k, r in enumerate(rows):
                        blob = r[7] if r[6] <= INLINE_BYTES and self._inline <= INLINE_TOTAL else None
                        if blob is not None:
                            self._inline += len(blob)
                        index[r[0]] = (first + k, r[4], r[3], blob)
            if chunk is not None:
                n = c.execute("SELECT coalesce(max(chunk), -1) + 1 FROM events WHERE run_id=?", (run_id,)).fetchone()[0]
                c.execute("INSERT INTO events (run_id, chunk, data) VALUES (?,?,?)", (run_id, n, chunk))
            if run_update is not None:
                c.execute("UPDATE runs SET finished=?, status=?, counts=?, started=coalesce(?, started) "
                          "WHERE run_id=?", run_update)
        self._do(write, write=True)

    def clear(self, task_id: str | None = None, workflow: str | None = None) -> int:
        """Forget stored results (all, one task's, or one workflow's); returns how many. Runs and events stay."""
        cond, args = _where(task_id, workflow)
        sql = "DELETE FROM results" + cond
        drop = [fp for fp, (_, m) in self.memory.items()
                if (task_id is None or m["task"] == task_id) and (workflow is None or m["workflow"] == workflow)]
        for fp in drop:
            del self.memory[fp]
        def delete(c: sqlite3.Connection) -> int:
            n = c.execute(sql, args).rowcount
            c.execute("INSERT INTO info (key, value) VALUES ('cleared', 1) "
                      "ON CONFLICT(key) DO UPDATE SET value = value + 1")  # other kernels re-read their index
            return n
        try:
            n = self._do(delete, write=True)
            self._index = None  # re-read on the next lookup
        except _Unavailable as exc:
            raise StoreError(f"{exc}; nothing was cleared from the file. Try again when the other kernel is idle.") from None
        return int(n) + len(drop)

    def results(self, task: str | None = None, workflow: str | None = None) -> "pd.DataFrame":
        """Stored results (without values): fingerprint (index), task, workflow, run_id, created, duration_s, size_bytes."""
        import pandas as pd
        cond, args = _where(task, workflow)
        sql = "SELECT fingerprint, task, workflow, run_id, created, duration, size FROM results" + cond + " ORDER BY id"
        rows = self._read(lambda c: c.execute(sql, args).fetchall())
        df = pd.DataFrame(rows, columns=["fingerprint", "task", "workflow", "run_id", "created", "duration_s",
                                         "size_bytes"])
        df["created"] = pd.to_datetime(df["created"], unit="s")
        return df.set_index("fingerprint")

    # ------------------------------------------------------------------ runs
    def runs(self, workflow: str | None = None) -> "pd.DataFrame":
        """One row per stored run, oldest first (index `run_id`): workflow, status, started, finished,
        duration_s, tasks, succeeded, cached, failed, stored. A run whose kernel died shows `interrupted`."""
        import pandas as pd
        sql = "SELECT run_id, workflow, status, started, finished, tasks, counts, host, pid FROM runs"
        args: list[Any] = []
        if workflow is not None:
            sql += " WHERE workflow=?"
            args.append(workflow)
        sql += " ORDER BY started"
        rows = self._read(lambda c: c.execute(sql, args).fetchall())
        stored = dict(self._read(lambda c: c.execute(
            "SELECT run_id, count(*) FROM results GROUP BY run_id").fetchall()))
        out = []
        for run_id, wf, status, started, finished, tasks, counts, host, pid in rows:
            counts = json.loads(counts) if counts else {}
            if status == "running" and not _alive(host, pid):
                status = "interrupted"
            out.append({"run_id": run_id, "workflow": wf, "status": status,
                        "started": pd.Timestamp(started, unit="s"),
                        "finished": pd.Timestamp(finished, unit="s") if finished else pd.NaT,
                        "duration_s": (finished - started) if finished else float("nan"), "tasks": tasks,
                        "succeeded": counts.get("succeeded", 0), "cached": counts.get("cached", 0),
                        "failed": counts.get("failed", 0) + counts.get("upstream_failed", 0),
                        "stored": stored.get(run_id, 0)})
        cols = ["run_id", "workflow", "status", "started", "finished", "duration_s", "tasks", "succeeded",
                "cached", "failed", "stored"]
        return pd.DataFrame(out, columns=cols).set_index("run_id")

    def run_record(self, run_id: str | None) -> tuple[dict[str, Any], list[list[Any]], dict[str, str]]:
        """(run row, events as lists, task -> fingerprint) of a stored run; None: the latest run."""
        def read(c: sqlite3.Connection) -> Any:
            if run_id is None:
                row = c.execute("SELECT * FROM runs ORDER BY started DESC LIMIT 1").fetchone()
            else:
                row = c.execute("SELECT * FROM runs WHERE run_id=?", (run_id,)).fetchone()
            if row is None:
                return None, [], []
            names = [d[0] for d in c.execute("SELECT * FROM runs LIMIT 0").description]
            chunks = c.execute("SELECT data FROM events WHERE run_id=? ORDER BY chunk", (row[0],)).fetchall()
            return dict(zip(names, row)), chunks, None
        row, chunks, _ = self._read(read)
        if row is None:
            known = list(self._read(lambda c: [r[0] for r in c.execute("SELECT run_id FROM runs ORDER BY started")]))
            if run_id is None:
                raise StoreError(f"the store {self.path} has no runs yet; run a workflow first")
            raise UnknownNameError("run", run_id, f"store {self.path}", known,
                                   hint="List stored runs with open_store().runs() or `%orch runs`.")
        events: list[list[Any]] = []
        fps: dict[str, str] = {}
        for (data,) in chunks:
            d = json.loads(data)
            events.extend(d.get("events", ()))
            fps.update(d.get("fps", {}))
        return row, events, fps

    def values(self, fingerprints: Iterable[str]) -> dict[str, Any]:
        """fingerprint -> unpickled value for those found (memory first); unreadable values are left out."""
        fps = list(dict.fromkeys(fingerprints))
        out = {fp: self.memory[fp][0] for fp in fps if fp in self.memory}
        index = self._fresh_index() or {}
        ids = {index[fp][0]: fp for fp in fps if fp not in out and fp in index}
        todo = list(ids)
        for i in range(0, len(todo), 500):
            part = todo[i:i + 500]
            rows = self._read(lambda c: c.execute(
                f"SELECT id, fingerprint, value FROM results WHERE id IN ({','.join('?' * len(part))})",
                part).fetchall())
            for rid, fp, blob in rows:
                if ids[rid] != fp:  # the id was reused by another kernel
                    continue
                try:
                    out[ids[rid]] = pickle.loads(blob)
                except Exception:  # noqa: BLE001 - e.g. a class not defined in this kernel yet
                    continue
        return out

    def load_run(self, run_id: str | None = None) -> "StoredRun":
        """A past run read back (read-only): .events, .statuses, .results, .errors, .metrics(), ..."""
        from ._storedrun import StoredRun
        return StoredRun.from_store(self, run_id)

    def _read(self, fn: Callable[[sqlite3.Connection], Any]) -> Any:
        try:
            return self._do(fn, write=False)
        except _Unavailable as exc:
            raise StoreError(f"{exc}; try again in a moment") from None


def _alive(host: str | None, pid: int | None) -> bool:
    """Whether the process that owns a 'running' run may still be running it (unknown: assume yes)."""
    if not pid or host != socket.gethostname():
        return True
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


_STORES: dict[Path, Store] = {}   # most recently used last
_STORES_LOCK = threading.Lock()
_MAX_OPEN = 8                     # connections kept open (3 file descriptors each); the others reconnect on use


def _where(task: str | None, workflow: str | None) -> tuple[str, list[str]]:
    """A ' WHERE …' clause (or '') selecting results by task and/or workflow, and its arguments."""
    conds = [(col, v) for col, v in (("task", task), ("workflow", workflow)) if v is not None]
    return (" WHERE " + " AND ".join(f"{col}=?" for col, _ in conds) if conds else ""), [v for _, v in conds]


def open_store(path: str | os.PathLike[str] | None = None) -> Store:
    """The Store at `path` (default: .notebook_orch/store.sqlite under the current working directory).

    One Store object per file per process; the file is created on first write.
    """
    p = Path(path) if path is not None else Path.cwd() / DEFAULT_DIR / DEFAULT_FILE
    if p.is_dir():
        p = p / DEFAULT_FILE
    p = p.absolute()
    with _STORES_LOCK:
        st = _STORES.pop(p, None) or Store(p)
        _STORES[p] = st
        for old in list(_STORES.values())[:-_MAX_OPEN]:
            old.close()
        return st


def cache_column(run: Any) -> dict[str, str]:
    """Task id -> one line about its cache state (for `%orch status`): where a cached output came from,
    'stored', or why it is not cached / not persisted."""
    from ._runstore import cache_column as column
    return column(run)
