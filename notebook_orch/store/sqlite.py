"""The SQLite layer: one file of signed results, runs, their events and leases. Knows nothing of `Run`.

The file is `.notebook_orch/store.sqlite` under the current working directory (directory
0700 — made so even when it exists wider —, file 0600), in WAL mode with a busy timeout so
several kernels sharing a folder read and write it at once. Two connections per Store:
readers (cache lookups on the event loop) never wait behind a write in progress — the
writer thread (`writer.py`) has its own. Every write is one `BEGIN IMMEDIATE … COMMIT`.

Tables: `results` (one row per fingerprint: pickled value, its HMAC signature, task,
workflow, run id, created, duration), `runs` (status, times, counts, the DAG for `Run.load`),
`events` (a run's events in JSON chunks), `leases` (fingerprints some live process is
computing now, so that another one waits instead of running them again). A value is
unpickled only when its signature verifies (`sign.py`); a row that does not is a miss with a
`StoreWarning` naming the file. A file that is not SQLite, belongs to another program, has
another schema or is corrupt is renamed aside (`store.sqlite.corrupt-…`) with a warning.

Long: one class per file format on purpose (connections, schema, index, reads, writes,
leases and the listing queries share the same locks and recovery path).
"""
from __future__ import annotations

import functools
import json
import os
import pickle
import socket
import sqlite3
import threading
import time
import warnings
import weakref
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import OrchError, UnknownNameError
from . import codec, lost, sign
from .history import HISTORY_SCHEMA as _HISTORY_SCHEMA
from .history import HISTORY_TABLES

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

__all__ = ["DEFAULT_DIR", "DEFAULT_FILE", "Batch", "Store", "StoreError", "StoreWarning"]

DEFAULT_DIR = ".notebook_orch"
DEFAULT_FILE = "store.sqlite"
APP_ID = 0x4E4F5243            # 'NORC' in PRAGMA application_id: marks the file as ours
SCHEMA_VERSION = 3             # PRAGMA user_version (2: unsigned rows, never read back)
BUSY_TIMEOUT_MS = 2_000        # our transactions last milliseconds; a lock held longer is someone else's
INLINE_BYTES = 1024            # outputs whose pickle is at most this big are read with the index
INLINE_TOTAL = 64 << 20        # ... up to this many bytes in all
LEASE_TTL = 30.0               # seconds a lease lasts unless renewed (the holder renews it while alive)
_HEADER = b"SQLite format 3\x00"
_CORRUPT = {"SQLITE_CORRUPT", "SQLITE_NOTADB"}

_SCHEMA: tuple[str, ...] = (
    """CREATE TABLE IF NOT EXISTS results (
        id INTEGER PRIMARY KEY AUTOINCREMENT,  -- never reused: readers follow new rows by id
        fingerprint TEXT NOT NULL,              -- 32 hex digits, or 'run:<run id>:<task>' (not reusable);
                                                -- one row each: a writer deletes the older row it knows of, leases
                                                -- keep two processes from computing one fingerprint at once
        task TEXT NOT NULL, workflow TEXT NOT NULL, run_id TEXT NOT NULL,
        created REAL NOT NULL, duration REAL, size INTEGER NOT NULL,
        sig BLOB NOT NULL,                      -- HMAC-SHA256(user secret, fingerprint NUL value)
        value BLOB NOT NULL                     -- pickle (protocol 5) of the output
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
        data TEXT NOT NULL,          -- JSON {"events": [[t, task, kind, attempt, info]...], "fps": {...}, "values": {...}}
        PRIMARY KEY (run_id, chunk)
    )""",
    """CREATE TABLE IF NOT EXISTS leases (
        fingerprint TEXT PRIMARY KEY, holder TEXT NOT NULL, host TEXT, pid INTEGER,
        expires REAL NOT NULL        -- time.time() after which nobody waits for it
    )""",
    *_HISTORY_SCHEMA,   # history.py: one summary row per run, the parts of each task definition
)


class StoreWarning(UserWarning):
    """The store could not be used as is (moved aside, busy, unwritable, a row that does not verify); the run goes on."""


class StoreError(OrchError):
    """The store was asked for something it does not have (an unknown run id, a bad path)."""


class _Unavailable(Exception):
    """A write or read could not be done now (locked too long, disk full, unreadable); the caller keeps data in memory."""


class Batch:
    """What one transaction writes (built by a recorder on the writer thread)."""

    __slots__ = ("chunk", "events", "extra", "lease_add", "lease_drop", "reset", "rows", "run_id", "run_insert",
                 "run_update")

    def __init__(self, run_id: str = ""):
        self.rows: list[tuple[Any, ...]] = []   # (fingerprint, task, workflow, run_id, created, duration, size, sig, blob)
        self.run_id = run_id
        self.chunk: str | None = None           # an events chunk (JSON, see codec.py)
        self.events = 0                         # how many events the chunk holds
        self.run_update: tuple[Any, ...] | None = None   # (finished, status, counts, started, run_id)
        self.run_insert: tuple[Any, ...] | None = None
        self.lease_add: list[str] = []
        self.lease_drop: list[str] = []
        self.reset = False                      # the run is written again from its start (lost.py): drop its old rows
        self.extra: list[tuple[str, Sequence[Any]]] = []   # more statements (sql, rows for executemany): history rows

    def __bool__(self) -> bool:
        return bool(self.rows or self.chunk or self.run_update or self.run_insert or self.lease_add or self.lease_drop
                    or self.extra)


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


ALL_STORES: weakref.WeakSet[Store] = weakref.WeakSet()   # drained at interpreter exit (notebook_orch.store)


class _Conn:
    """One connection and the lock its users hold while they use it."""

    __slots__ = ("con", "gen", "ino", "lock")

    def __init__(self) -> None:
        self.con: sqlite3.Connection | None = None
        self.ino: int | None = None
        self.gen = -1
        self.lock = threading.RLock()


class Store:
    """One SQLite store file. Thread-safe; several processes may share the file.

    Results that cannot be pickled or written are kept in `memory` for the session, and results a
    run produced but the writer has not committed yet in `pending`; `get` finds both like stored ones.
    """

    def __init__(self, path: str | os.PathLike[str]):
        self.path = Path(path).absolute()
        self.memory: dict[str, tuple[Any, dict[str, Any]]] = {}   # fingerprint -> (value, meta): session only
        self.pending: dict[str, tuple[Any, dict[str, Any]]] = {}  # fingerprint -> (value, meta): not committed yet
        self.final: dict[str, str] = {}                            # run id -> its end status, until it is written
        self.moved: list[Path] = []                                # files moved aside by this Store
        self.holder = f"{socket.gethostname()}:{os.getpid()}"      # this process, as a lease holder
        self._r, self._w = _Conn(), _Conn()                        # reader and writer connections
        self._l = _Conn()                                          # the loop's writes: never waits for a lock
        self.inline: weakref.WeakSet[Any] = weakref.WeakSet()      # recorders writing on their run's loop
        self._gen = 0                                              # bumped when the file is moved aside
        self._file_lock = threading.RLock()                        # one thread at a time opens / moves the file
        # fingerprint -> (row id, created, run id, pickle if small else None, its signature if small)
        self._index: dict[str, tuple[int, float, str, bytes | None, bytes | None]] | None = None
        self._leases: dict[str, tuple[str, str | None, int | None, float]] = {}  # foreign leases: fp -> row
        self._ilock = threading.Lock()                             # guards _index bookkeeping across threads
        self._inline = 0
        self._cleared: Any = None
        self._index_id = 0
        self._data_version = -1
        self._checked = 0.0
        self._moved_at = 0.0
        self._warned: set[str] = set()                             # fingerprints already warned about
        self.writer: Any = None                                    # the Writer thread, made on first use
        ALL_STORES.add(self)

    def __repr__(self) -> str:
        return f"<Store {self.path}>"

    # ------------------------------------------------------------------ connection
    def _connect(self, c: _Conn, check_file: bool = False) -> sqlite3.Connection:
        if c.con is not None and c.gen == self._gen:
            if not check_file:
                return c.con
            why = lost.check(self.path, c.ino)   # deleted, replaced, truncated under us (store/lost.py)
            if why is None:
                return c.con
            if why in ("it was truncated", "it was overwritten"):
                self._move_aside(why, c)         # what is left is kept aside; the runs are written again
            else:
                self._gen += 1                   # every connection reopens; the runs are written again
                self._index = None
                lost.rewrite_all(self, why)
        if c.con is not None:
            c.con.close()  # the file was deleted or moved aside (maybe by another kernel): reopen
            c.con = None
        for attempt in range(3):
            try:
                with self._file_lock:
                    c.con = self._open()
                ino = os.stat(self.path).st_ino
                if ino != c.ino and c is self._r:  # another file than the one the index describes
                    self._index = None
                c.ino, c.gen = ino, self._gen
                if c is self._r:
                    self._data_version = -1
                return c.con
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
        if d.name == DEFAULT_DIR and os.stat(d).st_mode & 0o077:
            try:  # an existing folder left open to others (0777): others could plant rows or read outputs
                os.chmod(d, 0o700)
            except OSError:
                pass
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
        for p in (self.path, self.path.with_name(self.path.name + "-wal"), self.path.with_name(self.path.name + "-shm")):
            try:
                if p.stat().st_mode & 0o077:
                    os.chmod(p, 0o600)
            except OSError:
                pass
        con = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None,
                              check_same_thread=False)
        try:
            con.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
            con.execute("PRAGMA journal_mode=WAL")
            con.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: a killed process loses nothing committed
            con.execute("PRAGMA wal_autocheckpoint=8000")
            con.execute("BEGIN")  # one snapshot: another kernel may be creating the schema right now
            try:
                tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")}
                app = con.execute("PRAGMA application_id").fetchone()[0]
                version = con.execute("PRAGMA user_version").fetchone()[0]
            finally:
                con.execute("COMMIT")
            tables.discard("sqlite_sequence")
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
                con.execute("PRAGMA auto_vacuum=INCREMENTAL")   # prune() gives space back without a full VACUUM
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
            elif not tables.issuperset(HISTORY_TABLES):   # a store of the previous release: add the history tables
                con.execute("BEGIN IMMEDIATE")
                try:
                    for stmt in _HISTORY_SCHEMA:
                        con.execute(stmt)
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

    def _move_aside(self, why: str, c: _Conn | None = None) -> None:
        """Rename the file (and its -wal/-shm) to '<name>.corrupt-<timestamp>' and warn; never deletes."""
        with self._file_lock:
            self._move_aside_locked(why, c)

    def _move_aside_locked(self, why: str, c: _Conn | None) -> None:
        self._gen += 1  # the other connection reopens on its next use (it may be in use on another thread now)
        if c is not None and c.con is not None:
            try:
                c.con.close()
            except sqlite3.Error:
                pass
            c.con = None
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
        self._index = None
        lost.rewrite_all(self, why, warn=False)   # this session's runs are written again to the fresh file
        warnings.warn(StoreWarning(
            f"notebook_orch store {self.path} was moved aside to {target.name} because {why}. "
            f"A fresh store is used from now on (the runs writing to the old file are written to it again); "
            f"tasks whose outputs were only in the old file will run again. "
            f"Delete {target} when you no longer need it."), stacklevel=3)

    def _do(self, fn: Callable[[sqlite3.Connection], Any], *, write: bool, wait: bool = True) -> Any:
        """Run fn(connection) (inside BEGIN IMMEDIATE … COMMIT when writing); recover from corruption once.
        `wait=False`: a write that would wait for another process's lock fails at once (_Unavailable)."""
        c = self._r if not write else self._w if wait else self._l
        with c.lock:
            for attempt in range(2):
                con = self._connect(c, check_file=write)
                if not wait:
                    con.execute("PRAGMA busy_timeout=0")
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
                    if attempt == 0 and c.gen != self._gen:  # moved aside meanwhile by the other thread
                        continue
                    if _errname(exc) in _CORRUPT and attempt == 0 and self._may_move():
                        self._move_aside(f"it is corrupt ({exc})", c)
                        continue
                    raise _Unavailable(f"store {self.path}: {exc}") from exc
            raise AssertionError("unreachable")

    def close(self) -> None:
        for c in (self._r, self._w, self._l):
            with c.lock:
                if c.con is not None:
                    c.con.close()
                    c.con = None

    # ------------------------------------------------------------------ the writer
    def drain(self, timeout: float | None = 10.0, retry: bool = False) -> bool:
        """Wait until every queued write is committed (or has failed and is kept in memory); False on timeout.
        `retry`: attempt what failed before now. For user commands and tests, not the loop's hot path."""
        for rec in list(self.inline):
            rec.drain_here()
        return self.writer.drain(timeout, retry) if self.writer is not None else True

    def enqueue(self, source: Any) -> None:
        """Have the writer thread collect batches from `source` (a recorder) until it is done."""
        from .writer import Writer
        if self.writer is None:
            self.writer = Writer(self)
        self.writer.add(source)

    # ------------------------------------------------------------------ results
    def reread(self) -> None:
        """Re-read the index now: another process has just stored something this one is about to look up."""
        self._fresh_index(now_=True)

    def may_have(self, fingerprint: str) -> bool:
        """False when the fingerprint is surely not stored (an in-memory index, re-read at most every 0.1 s)."""
        if fingerprint in self.memory or fingerprint in self.pending:
            return True
        index = self._fresh_index()
        return index is None or fingerprint in index

    def _fresh_index(self, now_: bool = False) -> dict[str, tuple[int, float, str, bytes | None, bytes | None]] | None:
        """The index of stored results, re-read from the file at most every 0.1 s (`now_`: re-read now)."""
        now = time.monotonic()
        if self._index is None or now_ or now - self._checked > 0.1:
            self._checked = now
            try:
                self._do(self._refresh_index, write=False)
            except _Unavailable:
                pass
        return self._index

    def _refresh_index(self, c: sqlite3.Connection) -> None:
        """Read the rows added since the last refresh (all of them after a clear() anywhere), and the leases."""
        version = c.execute("PRAGMA data_version").fetchone()[0]
        if self._index is not None and version == self._data_version:
            return
        row = c.execute("SELECT value FROM info WHERE key='cleared'").fetchone()
        cleared = row[0] if row else None
        with self._ilock:
            if self._index is None or cleared != self._cleared:
                self._index, self._index_id, self._inline = {}, 0, 0
            start = self._index_id
        top = c.execute("SELECT coalesce(max(id), 0) FROM results").fetchone()[0]
        rows = c.execute(f"SELECT id, fingerprint, created, run_id, CASE WHEN size <= {INLINE_BYTES} THEN sig END, "
                         f"CASE WHEN size <= {INLINE_BYTES} THEN value END FROM results WHERE id > ? AND id <= ? "
                         f"AND fingerprint NOT LIKE 'run:%' ORDER BY id", (start, top)).fetchall()
        leases = c.execute("SELECT fingerprint, holder, host, pid, expires FROM leases WHERE holder != ?",
                           (self.holder,)).fetchall()
        with self._ilock:
            index = self._index
            assert index is not None
            for rid, fp, created, run_id, sig_, blob in rows:
                old = index.get(fp)
                if old is not None and old[0] >= rid:
                    continue
                if blob is not None:
                    if self._inline > INLINE_TOTAL:
                        blob = sig_ = None
                    else:
                        self._inline += len(blob)
                index[fp] = (rid, created, run_id, blob, sig_)
            self._index_id = max(self._index_id, top)
        self._leases = {fp: (h, host, pid, exp) for fp, h, host, pid, exp in leases}
        self._data_version = version
        self._cleared = cleared

    def _loads(self, fingerprint: str, blob: bytes, sig_: bytes | None, task: str = "") -> tuple[bool, Any]:
        """(True, value) when the row verifies; else (False, None) and one StoreWarning naming the file."""
        if not sign.verify(fingerprint, blob, sig_):
            if fingerprint not in self._warned:
                self._warned.add(fingerprint)
                what = f"of task {task!r} " if task else ""
                warnings.warn(StoreWarning(
                    f"a stored output {what}in {self.path} (fingerprint {fingerprint}) does not verify with your "
                    f"signing key {sign.secret_path()}: it was changed, or written by another user. It was not "
                    f"loaded; the task runs again. `open_store().clear()` removes such rows."), stacklevel=4)
            return False, None
        return True, pickle.loads(blob)

    def get(self, fingerprint: str, max_age: float | None = None) -> tuple[bool, Any, dict[str, Any]]:
        """(True, value, meta) for a stored result not older than max_age seconds, else (False, None, {})."""
        now = time.time()
        for where, table in (("memory", self.memory), ("memory", self.pending)):
            mem = table.get(fingerprint)
            if mem is not None and (max_age is None or now - mem[1]["created"] <= max_age):
                return True, mem[0], {**mem[1], "where": where}
        index = self._fresh_index()
        entry = index.get(fingerprint) if index is not None else None
        if entry is None or (max_age is not None and now - entry[1] > max_age):
            return False, None, {}
        if entry[3] is not None:  # a small output read with the index: no query
            ok, value = self._loads(fingerprint, entry[3], entry[4])
            if not ok:
                return False, None, {}
            return True, value, {"run_id": entry[2], "created": entry[1], "where": "store"}
        try:
            row = self._do(lambda c: c.execute(
                "SELECT sig, value, task, workflow, run_id, created, duration FROM results WHERE id=? AND fingerprint=?",
                (entry[0], fingerprint)).fetchone(), write=False)
        except _Unavailable:
            return False, None, {}
        if row is None:  # cleared or replaced by another kernel
            if index is not None:
                index.pop(fingerprint, None)
            return False, None, {}
        ok, value = self._loads(fingerprint, row[1], row[0], row[2])  # unpickling errors propagate: a miss
        if not ok:
            return False, None, {}
        return True, value, {"task": row[2], "workflow": row[3], "run_id": row[4], "created": row[5],
                             "duration": row[6], "where": "store"}

    def put(self, fingerprint: str, value: Any, *, task: str, workflow: str = "", run_id: str = "",
            duration: float | None = None) -> bool:
        """Store one result now (one transaction, on the calling thread). False when kept in memory only."""
        meta = {"task": task, "workflow": workflow, "run_id": run_id, "created": time.time(), "duration": duration}
        try:
            blob = pickle.dumps(value, protocol=5)
        except BaseException:  # noqa: BLE001 - unpicklable (even SystemExit from a __reduce__): session only
            self.memory[fingerprint] = (value, meta)
            return False
        b = Batch(run_id)
        b.rows.append((fingerprint, task, workflow, run_id, meta["created"], duration, len(blob),
                       sign.sign(fingerprint, blob), blob))
        try:
            self.write(b)
        except _Unavailable:
            self.memory[fingerprint] = (value, meta)
            return False
        return True

    def write(self, b: Batch, wait: bool = True) -> None:
        """One transaction: result rows (a newer row of a fingerprint replaces the older one this process
        knows of), an events chunk, the run row insert/update and lease changes. Raises _Unavailable when it
        cannot be written. Rows are appended (no random-key index to rewrite: ~3x cheaper per row)."""
        if b.rows and self._index is None:
            self._fresh_index()

        def write(c: sqlite3.Connection) -> tuple[int, int]:
            if b.reset:   # written again from its first event: what of it reached this file is replaced
                c.execute("DELETE FROM events WHERE run_id=?", (b.run_id,))
                c.execute("DELETE FROM results WHERE run_id=? AND fingerprint LIKE 'run:%'", (b.run_id,))
            if b.run_insert is not None:
                c.execute("INSERT OR IGNORE INTO runs (run_id, workflow, started, finished, status, tasks, counts, "
                          "host, pid, meta) VALUES (?,?,?,?,?,?,?,?,?,?)", b.run_insert)
            first = last = 0
            if b.rows:
                index = self._index or {}
                old = [(index[r[0]][0],) for r in b.rows if r[0] in index]
                if old:
                    c.executemany("DELETE FROM results WHERE id=?", old)
                c.executemany("INSERT INTO results (fingerprint, task, workflow, run_id, created, "
                              "duration, size, sig, value) VALUES (?,?,?,?,?,?,?,?,?)", b.rows)
                last = c.execute("SELECT last_insert_rowid()").fetchone()[0]
                first = last - len(b.rows) + 1   # one statement under our write lock: consecutive ids
            if b.chunk is not None:
                n = c.execute("SELECT coalesce(max(chunk), -1) + 1 FROM events WHERE run_id=?",
                              (b.run_id,)).fetchone()[0]
                c.execute("INSERT INTO events (run_id, chunk, data) VALUES (?,?,?)", (b.run_id, n, b.chunk))
            for sql, rows in b.extra:
                c.executemany(sql, rows)
            if b.run_update is not None:
                c.execute("UPDATE runs SET finished=?, status=?, counts=?, started=coalesce(?, started) "
                          "WHERE run_id=?", b.run_update)
            if b.lease_drop:
                c.executemany("DELETE FROM leases WHERE fingerprint=? AND holder=?",
                              [(fp, self.holder) for fp in b.lease_drop])
            if b.lease_add:
                now = time.time()
                c.execute("DELETE FROM leases WHERE expires < ?", (now,))
                host, pid = socket.gethostname(), os.getpid()
                c.executemany("INSERT OR IGNORE INTO leases (fingerprint, holder, host, pid, expires) "
                              "VALUES (?,?,?,?,?)", [(fp, self.holder, host, pid, now + LEASE_TTL)
                                                     for fp in b.lease_add])
            return first, last
        first, last = self._do(write, write=True, wait=wait)
        if b.rows:
            self._indexed(b.rows, first, last)

    def _indexed(self, rows: Sequence[tuple[Any, ...]], first: int, last: int) -> None:
        """Add rows just committed by this process to the index (no re-read needed)."""
        with self._ilock:
            index = self._index
            if index is None or not first:  # not one block of ids: the next refresh reads them
                return
            for k, r in enumerate(rows):
                if r[0].startswith("run:"):
                    continue
                small = r[6] <= INLINE_BYTES and self._inline <= INLINE_TOTAL
                if small:
                    self._inline += r[6]
                index[r[0]] = (first + k, r[4], r[3], r[8] if small else None, r[7] if small else None)
            if first == self._index_id + 1:
                self._index_id = last

    def renew_leases(self) -> None:
        """Push back the expiry of this process's leases (the writer does it while recorders are live)."""
        self._do(lambda c: c.execute("UPDATE leases SET expires=? WHERE holder=?",
                                     (time.time() + LEASE_TTL, self.holder)), write=True)

    def claim(self, fingerprint: str) -> str | None:
        """Take the lease of `fingerprint` at once, in one transaction (two processes that start together cannot
        both get it); returns the live process that holds it instead, or None when this one does now."""
        def claim(c: sqlite3.Connection) -> str | None:
            now = time.time()
            row = c.execute("SELECT holder, host, pid, expires FROM leases WHERE fingerprint=?", (fingerprint,)).fetchone()
            if row is not None and row[0] != self.holder and row[3] >= now and _alive(row[1], row[2]):
                return str(row[0])
            c.execute("INSERT OR REPLACE INTO leases (fingerprint, holder, host, pid, expires) VALUES (?,?,?,?,?)",
                      (fingerprint, self.holder, socket.gethostname(), os.getpid(), now + LEASE_TTL))
            return None
        try:
            return self._do(claim, write=True)
        except _Unavailable:
            return self.lease_holder(fingerprint)

    def lease_holder(self, fingerprint: str, fresh: bool = False) -> str | None:
        """Who (another live process) is computing this fingerprint now, or None. `fresh`: read the lease from the
        file now (the index is re-read at most every 0.1 s: a lease taken since would be missed)."""
        if fresh:
            try:
                row = self._do(lambda c: c.execute("SELECT holder, host, pid, expires FROM leases WHERE fingerprint=? "
                                                   "AND holder != ?", (fingerprint, self.holder)).fetchone(), write=False)
            except _Unavailable:
                row = None
            if row is None:
                return None
            holder, host, pid, expires = row
            return holder if expires >= time.time() and _alive(host, pid) else None
        self._fresh_index()
        row = self._leases.get(fingerprint)
        if row is None:
            return None
        holder, host, pid, expires = row
        if expires < time.time() or not _alive(host, pid):
            return None
        return holder

    def clear(self, task_id: str | None = None, workflow: str | None = None) -> int:
        """Forget stored results (all, one task's, or one workflow's); returns how many. Runs and events stay."""
        self.drain()
        cond, args = _where(task_id, workflow)
        sql = "DELETE FROM results" + cond
        drop = [fp for fp, (_, m) in self.memory.items()
                if (task_id is None or m["task"] == task_id) and (workflow is None or m["workflow"] == workflow)]
        for fp in drop:
            del self.memory[fp]
        for fp, (_, m) in list(self.pending.items()):
            if (task_id is None or m["task"] == task_id) and (workflow is None or m["workflow"] == workflow):
                self.pending.pop(fp, None)

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

    def results(self, task: str | None = None, workflow: str | None = None) -> pd.DataFrame:
        """Stored results (without values): fingerprint (index), task, workflow, run_id, created, duration_s, size_bytes."""
        import pandas as pd
        self.drain()
        cond, args = _where(task, workflow)
        sql = "SELECT fingerprint, task, workflow, run_id, created, duration, size FROM results" + cond + " ORDER BY id"
        rows = self._read(lambda c: c.execute(sql, args).fetchall())
        df = pd.DataFrame(rows, columns=["fingerprint", "task", "workflow", "run_id", "created", "duration_s",
                                         "size_bytes"])
        df["created"] = pd.to_datetime(df["created"], unit="s")
        return df.set_index("fingerprint")

    # ------------------------------------------------------------------ runs
    def runs(self, workflow: str | None = None) -> pd.DataFrame:
        """One row per stored run, oldest first (index `run_id`): workflow, status, started, finished,
        duration_s, tasks, succeeded, cached, failed, stored. A run whose kernel died shows `interrupted`, a row
        that does not read `malformed` (with a StoreWarning; `malformed.py`)."""
        import pandas as pd
        self.drain()
        sql = "SELECT run_id, workflow, status, started, finished, tasks, counts, host, pid FROM runs"
        args: list[Any] = []
        if workflow is not None:
            sql += " WHERE workflow=?"
            args.append(workflow)
        sql += " ORDER BY started"
        rows = self._read(lambda c: c.execute(sql, args).fetchall())
        stored = dict(self._read(lambda c: c.execute(
            "SELECT run_id, count(*) FROM results GROUP BY run_id").fetchall()))
        from .malformed import listing_row   # a row that does not read is listed as 'malformed', with a warning
        out = [listing_row(self, row, functools.partial(self._listed, stored=stored)) for row in rows]
        cols = ["run_id", "workflow", "status", "started", "finished", "duration_s", "tasks", "succeeded",
                "cached", "failed", "stored"]
        return pd.DataFrame(out, columns=cols).set_index("run_id")

    def _listed(self, row: Sequence[Any], stored: dict[str, int]) -> dict[str, Any]:
        import pandas as pd
        run_id, wf, status, started, finished, tasks, counts, host, pid = row
        n = json.loads(counts) if counts else {}
        return {"run_id": run_id, "workflow": wf, "status": self.status_of(run_id, status, host, pid),
                "started": pd.Timestamp(started, unit="s"),
                "finished": pd.Timestamp(finished, unit="s") if finished else pd.NaT,
                "duration_s": (finished - started) if finished else float("nan"), "tasks": int(tasks),
                "succeeded": int(n.get("succeeded", 0)), "cached": int(n.get("cached", 0)),
                "failed": int(n.get("failed", 0)) + int(n.get("upstream_failed", 0)),
                "stored": stored.get(run_id, 0)}

    def status_of(self, run_id: str, status: str, host: str | None, pid: int | None) -> str:
        """A run row's status as it is: the end status this process knows but could not write yet,
        `interrupted` for a 'running' run whose process is gone."""
        if status == "running" and run_id in self.final:
            return self.final[run_id]
        if status == "running" and not _alive(host, pid):
            return "interrupted"
        return status

    def run_record(self, run_id: str | None) -> tuple[dict[str, Any], list[Any], dict[str, str], dict[str, Any]]:
        """(run row, events as lists, task -> results key, {"values": task -> output kept in the events,
        "notes": task -> why not persisted}) of a stored run; None: the latest."""
        self.drain()

        def read(c: sqlite3.Connection) -> Any:
            if run_id is None:
                row = c.execute("SELECT * FROM runs ORDER BY started DESC LIMIT 1").fetchone()
            else:
                row = c.execute("SELECT * FROM runs WHERE run_id=?", (run_id,)).fetchone()
            if row is None:
                return None, []
            names = [d[0] for d in c.execute("SELECT * FROM runs LIMIT 0").description]
            chunks = c.execute("SELECT data FROM events WHERE run_id=? ORDER BY chunk", (row[0],)).fetchall()
            return dict(zip(names, row)), chunks
        row, chunks = self._read(read)
        if row is None:
            known = list(self._read(lambda c: [r[0] for r in c.execute("SELECT run_id FROM runs ORDER BY started")]))
            if run_id is None:
                raise StoreError(f"the store {self.path} has no runs yet; run a workflow first")
            raise UnknownNameError("run", run_id, f"store {self.path}", known,
                                   hint="List stored runs with open_store().runs() or `%orch runs`.")
        events: list[Any] = []
        fps: dict[str, str] = {}
        extra: dict[str, Any] = {"values": {}, "notes": {}}
        ids = json.loads(row["meta"]).get("ids", [])
        for (data,) in chunks:
            d = json.loads(data)
            events.extend(codec.decode(d["ev"], ids) if "ev" in d else d.get("events", ()))
            fps.update(d.get("fps", {}))
            extra["values"].update(d.get("values", {}))
            if d.get("nones"):
                extra["values"].update(dict.fromkeys((ids[k] for k in codec.unpack_ints(d["nones"])), None))
            extra["notes"].update(d.get("notes", {}))
        return row, events, fps, extra

    def values(self, fingerprints: Iterable[str], run_id: str | None = None) -> dict[str, Any]:
        """fingerprint -> unpickled value for those found and verified (memory first); others are left out.
        `run_id`: also the outputs kept under that run ('run:<run id>:<task>' keys)."""
        fps = list(dict.fromkeys(fingerprints))
        out = {fp: self.memory[fp][0] for fp in fps if fp in self.memory}
        index = self._fresh_index() or {}
        ids = [index[fp][0] for fp in fps if fp not in out and fp in index]
        queries: list[tuple[str, list[Any]]] = [("SELECT fingerprint, sig, value, task FROM results WHERE id IN "
                    f"({','.join('?' * len(ids[i:i + 500]))})", ids[i:i + 500]) for i in range(0, len(ids), 500)]
        if run_id is not None and any(fp.startswith("run:") and fp not in out for fp in fps):
            queries.append(("SELECT fingerprint, sig, value, task FROM results WHERE run_id=? AND fingerprint LIKE "
                            "'run:%'", [run_id]))
        wanted = set(fps)
        for sql, args in queries:
            rows = self._read(functools.partial(_fetch_all, sql=sql, args=args))
            for fp, sig_, blob, task in rows:
                if fp not in wanted or fp in out:
                    continue
                try:
                    ok, value = self._loads(fp, blob, sig_, task)
                except Exception:  # noqa: BLE001 - e.g. a class not defined in this kernel yet
                    continue
                if ok:
                    out[fp] = value
        return out

    def prune(self, keep_runs: int | None = 100, older_than: Any = None, workflow: str | None = None) -> pd.Series:
        """Remove runs beyond the last `keep_runs` of each workflow (and those older than `older_than`: '30d',
        '12h'), their events and the outputs no kept run needs, and give the space back (retention.py)."""
        from .retention import prune
        return prune(self, keep_runs, older_than, workflow)

    def report(self, top: int = 10) -> Any:
        """Size on disk, runs per workflow, outputs, the `top` biggest outputs (a StoreReport)."""
        from .retention import report
        return report(self, top)

    def load_run(self, run_id: str | None = None) -> Any:
        """A past run read back (read-only): .events, .statuses, .results, .errors, .metrics(), ..."""
        from .load import load_run
        return load_run(self, run_id)

    def _read(self, fn: Callable[[sqlite3.Connection], Any]) -> Any:
        try:
            return self._do(fn, write=False)
        except _Unavailable as exc:
            raise StoreError(f"{exc}; try again in a moment") from None


def _alive(host: str | None, pid: int | None) -> bool:
    """Whether the process that owns a 'running' run (or a lease) may still be running (unknown: assume yes)."""
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


def _fetch_all(c: sqlite3.Connection, sql: str, args: Sequence[Any]) -> list[Any]:
    return c.execute(sql, args).fetchall()


def _where(task: str | None, workflow: str | None) -> tuple[str, list[str]]:
    """A ' WHERE …' clause (or '') selecting results by task and/or workflow, and its arguments."""
    conds = [(col, v) for col, v in (("task", task), ("workflow", workflow)) if v is not None]
    return (" WHERE " + " AND ".join(f"{col}=?" for col, _ in conds) if conds else ""), [v for _, v in conds]
