"""The recorder: follows one run's events and has them written to the store. It never emits into the run.

Every 10 ms (`_tick`, on the run's loop) it files the events added since its last look (the
run's event list only grows) and, when that is cheap and needs no waiting, builds and writes
the next batch there (`collect()`): outputs pickled and signed, events redacted
(`notebook_orch.redact`) and packed into a JSON chunk every half second (`codec`), once the
run is over its status and counts. An output that pickles big, a locked store, a write error
or a large run's last events hand the run to the writer thread (`writer.py`), which does the
same with waiting and retries. A `succeeded` output stored under a fingerprint is findable by
this process's next lookups at once (`Store.pending`). What could not be kept is written down
in the recorder's own notes (`not_persisted`, read by `run.not_persisted`, the metrics and
`%orch status`), never as an event of the run.

Outputs are pickled after their task ended (within 10 ms on the loop, later on the thread), so a
downstream body that mutates its input in place before that may have the mutated value stored (or the pickling fails: then
the output is kept in memory for the session, with the reason). Small JSON-able outputs of
tasks that are not cached (`cache=False`) are kept in the events chunk itself, not as rows.

Just over 500 lines on purpose: the loop's half and the writer thread's half build the same batch,
and a store lost mid-run (`lost.py`) rewinds both, so they stay in one class.
"""
from __future__ import annotations

import asyncio
import json
import pickle
import time
import warnings
from collections import Counter
from itertools import compress
from operator import itemgetter
from typing import Any

from ..redact import learn_run, redact, redact_obj
from . import codec, lost, sign
from .cache import RunCache
from .history import rows_at_end
from .runrow import run_row
from .sqlite import Batch, Store, StoreWarning, _Unavailable

__all__ = ["Recorder"]

_SIMPLE = frozenset({type(None), int, float, bool})
_JSON_VALUE = frozenset({type(None), int, float, bool, str})
EVENTS_EVERY = 0.5   # seconds between events chunks of a live run (outputs are committed at once)
_ENDED = frozenset({"failed", "upstream_failed", "skipped", "cancelled"})
LOOP_PICKLE_BYTES = 1 << 20   # an output pickled bigger than this is left to the writer thread
COMMIT_GAP = 0.01             # seconds at least between two commits of a run
FINAL_ON_LOOP = 5_000         # events left at a run's end above which the writer thread writes them
KEEP_ROWS = 3     # failed attempts at a finished run's batch before its outputs stay in memory only
KEEP_EVENTS = 5   # ... before its events are given up too (its status is retried as long as the process lives)


class _TooBig(Exception):
    """An output pickles to more than the loop may spend on it: the writer thread takes over."""


class _Buffer:
    """A writable that keeps pickle's frames (writing through Python code lets the GIL go between frames,
    so pickling a 200 MB output on the writer thread does not hold the loop for the whole dump)."""

    __slots__ = ("parts", "size", "cap")

    def __init__(self, cap: int | None) -> None:
        self.parts: list[bytes] = []
        self.size = 0
        self.cap = cap

    def write(self, b: Any) -> int:
        self.parts.append(bytes(b))
        self.size += len(b)
        if self.cap is not None and self.size > self.cap:
            raise _TooBig
        return len(b)


def _pickle(value: Any, cap: int | None = None) -> bytes:
    buf = _Buffer(cap)
    pickle.Pickler(buf, protocol=5).dump(value)
    return b"".join(buf.parts)


class Recorder:
    """Persists one run (see the module docstring)."""

    def __init__(self, store: Store, cache: RunCache):
        self.store = store
        self.cache = cache
        self.workflow = cache.workflow
        self.not_persisted: dict[str, str] = {}  # task -> why its output is only in memory (this process)
        self.retry_at = 0.0                      # the writer's: no new attempt before this monotonic time
        self.on_loop = True                      # batches are written on the run's loop (else by the thread)
        self.loop: Any = None
        self._handle: Any = None                 # the loop's next _tick
        self._last_commit = 0.0
        self.run: Any = None
        self.st: Any = None                      # the run's state (a RunState, or today's scheduler)
        self._run_id = ""
        self._outs: list[Any] = []               # succeeded / cached events not yet turned into rows
        self._ended: list[str] = []              # tasks that ended without an output, not yet collected
        self._urgent = False                     # an output for the cache (or the run's end) waits: write it now
        self._handlers = {"running": self._on_running, "succeeded": self._on_output, "cached": self._on_output,
                          "fallback": self._on_fallback, "failed": self._on_ended, "upstream_failed": self._on_ended,
                          "skipped": self._on_ended, "cancelled": self._on_ended}
        self._scanned = 0                        # events of the run already filed
        self._wanted: frozenset[str] | None = None   # the kinds _scan files (worked out at its first call)
        self._started: dict[str, float] = {}
        self._held: set[str] = set()             # fingerprints this run leases
        # what the next batch carries (kept across a failed write, sent again with the next one)
        self._rows: list[tuple[Any, ...]] = []
        self._values: dict[str, tuple[Any, str, str]] = {}   # key -> (value, task, where it waits)
        self._events: list[Any] = []
        self._fps: dict[str, str] = {}
        self._json: dict[str, Any] = {}
        self._nones: list[int] = []              # indexes of cache=False tasks whose output is None
        self._notes: dict[str, str] = {}
        self._drop: list[str] = []
        self._lease_add: list[str] = []
        self._meta_row: tuple[Any, ...] | None = None   # the run's row, until it is written
        self._inserted = False
        self._final: tuple[Any, ...] | None = None
        self._final_tries = 0
        self._extra: list[Any] = []              # the run's history rows (history.py), sent with its end
        self._events_at = time.monotonic()      # when the last events chunk was built
        self.hurry = False                      # set by drain(): write the events now too
        self._done = False
        self._warned = False
        self.written = False                    # a batch of this run was committed (lost.py: something to lose)
        self._rewrite = False                   # set by lost.py (any thread): the store file was lost, write again
        self._reset = False                     # the next batch replaces what the run has in the (fresh) file
        self._rewound = False                   # written again: a `cached` output is written as an output too

    # ------------------------------------------------------------------ wiring (on the loop)
    def bind(self, run: Any) -> None:
        """Follow `run` (before its scheduler begins); exposes run.fingerprints / uncacheable / not_persisted."""
        self.run = run
        self.st = run.state
        self.cache.state = self.st
        self._run_id = run.id
        run.fingerprints = self.cache.fingerprints
        run.uncacheable = self.cache.uncacheable
        run.not_persisted = self.not_persisted
        run._recorder = self
        learn_run(run)                   # secret-named globals of the bodies: masked wherever text leaves
        lost.follow(self.store, self)    # written again if the store file is lost under the run
        try:
            self.loop = asyncio.get_running_loop()
        except RuntimeError:
            self.loop = None
        self.store.inline.add(self)
        if self.loop is None:
            self.to_thread()
        else:
            self._handle = self.loop.call_later(COMMIT_GAP, self._tick)

    def finished(self) -> None:
        """The scheduler's finish hook: write the rest at once. On the loop when that is quick; a large run's
        last events (encoding 30,000 of them took 15-25 ms of the loop, 300,000 ten times that) go to the
        writer thread, so the run returns when it ended. Every read of the store waits for the writer
        (`Store.drain`), so this process never sees the run unfinished."""
        self.hurry = True
        if self.on_loop and len(self.st.events) - self._scanned + len(self._events) > FINAL_ON_LOOP:
            self.to_thread()
        if self.on_loop:
            self._tick()
        elif self.store.writer is not None:
            self.store.writer.wake()

    # ------------------------------------------------------------------ reading the events
    def _scan(self) -> None:
        """File the events added since the last look: outputs to write, start times, ends, fallbacks."""
        events = self.st.events
        n = len(events)
        new = events[self._scanned:n]
        self._scanned = n
        handlers, never = self._handlers, self.cache.never
        unc, results, index, nones, outs = self.cache.uncacheable, self.st.results, self.cache.g.index, \
            self._nones, self._outs
        wanted = self._wanted
        if wanted is None:   # a run of cache=False tasks only keeps no start times: its `running` events pass by
            wanted = self._wanted = frozenset(handlers).difference(("running",) if len(never) == len(index) else ())
        for ev in compress(new, map(wanted.__contains__, map(_KIND, new))):   # in C: most events need nothing
            kind = ev[2]
            if (kind == "succeeded" or kind == "running") and ev[1] in never:
                # cache=False, most tasks of a large run, inline: never reused, no start time kept,
                # and a None output is one index in the events chunk
                if kind == "succeeded":
                    unc[ev[1]] = _NEVER
                    if results.get(ev[1]) is None:
                        nones.append(index[ev[1]])
                    else:
                        outs.append(ev)
                continue
            h = handlers.get(kind)
            if h is not None:
                h(ev)
        self._events.extend(new)

    def _on_running(self, ev: Any) -> None:
        self._started.setdefault(ev[1], ev[0])   # durations are kept for rows of the cache only

    def _on_output(self, ev: Any) -> None:
        tid = ev[1]
        cache = self.cache
        self._outs.append(ev)
        if tid in cache.never:  # 'cached': a cache=False task reused within a session (retry, only=)
            return
        if ev[2] == "succeeded":
            if tid in cache.fallback:
                cache.uncacheable[tid] = "its output came from its fallback: kept for this run, not reused"
        if cache.is_reusable(tid):
            fp = cache.fingerprints[tid]
            self.store.pending[fp] = (self.st.results.get(tid), {
                "task": tid, "workflow": self.workflow, "run_id": self._run_id, "created": time.time(),
                "duration": None})
            self._urgent = True

    def _on_fallback(self, ev: Any) -> None:
        self.cache.fallback.add(ev[1])

    def _on_ended(self, ev: Any) -> None:
        if ev[1] in self.cache.fingerprints:
            self._ended.append(ev[1])
            self._urgent = True

    # ------------------------------------------------------------------ writing on the loop
    def _tick(self) -> None:
        """On the loop: build and write the next batch if that is cheap and needs no waiting; else hand the
        run over to the writer thread (a locked store, an output that pickles big, any write error)."""
        self._handle = None
        if not self.on_loop or self._done:
            return
        if self._rewrite:   # the whole run is written again (lost.py): pickling every output is the thread's work
            self.to_thread()
            return
        try:
            b = self.collect(cap=LOOP_PICKLE_BYTES)
            if b is not None:
                self.store.write(b, wait=False)
                self._last_commit = time.monotonic()
                self.committed(b)
        except Exception:  # noqa: BLE001 - _TooBig, busy, disk full, a bug: the thread retries and reports
            self.to_thread()
            return
        if not self._done:
            self._handle = self.loop.call_later(COMMIT_GAP, self._tick)

    def to_thread(self) -> None:
        """From now on the writer thread collects and writes this run (it waits for locks, retries, warns)."""
        if not self.on_loop:
            return
        self.on_loop = False
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        self.store.inline.discard(self)
        self.store.enqueue(self)

    def drain_here(self) -> None:
        """For `Store.drain`: write what this run has now, on the calling thread when that is its loop's."""
        if not self.on_loop:
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is not None and running is self.loop:
            self.hurry = True
            self._tick()
        else:
            self.to_thread()

    # ------------------------------------------------------------------ the writer's side
    def done(self) -> bool:
        return self._done

    def due(self, now: float) -> bool:
        """Whether the writer should collect now: not waiting after a failure, except for a run just over."""
        return self.retry_at <= now or (self._final is None and self.st.finished)

    def quiet(self) -> bool:
        """Nothing left to write now (or waiting to try again after a failure)."""
        if self._done:
            return True
        if not self.due(time.monotonic()):
            return True
        return (not self._rows and not self._events and self._scanned >= len(self.st.events)
                and not self.cache.leases and not self.st.finished)

    def collect(self, cap: int | None = None) -> Batch | None:
        """The next batch: new events, their outputs, leases, the run row (see the module docstring).
        `cap`: raise _TooBig (leaving everything for the thread) when an output pickles bigger."""
        if self._rewrite:
            self._rewind()
        st = self.st
        finished = st.finished                  # read first: every event up to run_finished is in the list
        if not self._inserted:   # the run's row first, alone: a store short of space still says it ran
            self._inserted = True
            self._meta_row = self._run_insert()
        if self._meta_row is not None and not finished:
            b = Batch(self._run_id)
            b.run_insert = self._meta_row
            b.reset = self._reset
            return b
        self._scan()
        now = time.monotonic()
        lazy = not (finished or self.hurry or self._urgent or self.cache.leases or self._meta_row is not None
                    or self._rows or now - self._events_at > EVENTS_EVERY)
        if lazy:  # nothing the cache or a resume needs yet: leave the work for later
            return None
        self._urgent = False
        outs, self._outs = self._outs, []
        for k, ev in enumerate(outs):
            try:
                if ev[2] == "succeeded":
                    self._output(ev, False, cap)
                else:
                    self._cached(ev, cap)
            except _TooBig:
                self._outs[:0] = outs[k:]
                raise
        ended, self._ended = self._ended, []
        for tid in ended:
            fp = self.cache.fingerprints.get(tid)
            if fp in self._held:
                self._held.discard(fp)
                self._drop.append(fp)
        leases, self.cache.leases = self.cache.leases, []
        self._lease_add.extend(leases)
        self._held.update(leases)
        if finished and self._final is None:
            counts = json.dumps(dict(Counter(st.status)))
            started = getattr(self.run, "started_wall", None) or getattr(st, "started_wall", None)
            self._final = (time.time(), st.run_status, counts, started, self._run_id)
            self.store.final[self._run_id] = st.run_status
            self._drop.extend(self._held)
            self._held.clear()
            self._extra = rows_at_end(self)
        b = Batch(self._run_id)
        b.run_insert = self._meta_row
        b.reset = self._reset
        b.rows = self._rows
        b.lease_add = self._lease_add
        b.lease_drop = self._drop
        b.extra = self._extra
        if finished or self.hurry or now - self._events_at > EVENTS_EVERY or len(self._events) > 100_000:
            if self._events or self._fps or self._json or self._notes or self._nones:
                self._events_at, self.hurry = now, False
                packed = codec.encode(self._events, self.cache.g.index, _clean)
                b.chunk = json.dumps({"ev": packed, "fps": self._fps, "values": self._json, "notes": self._notes,
                                      "nones": codec.pack_ints(self._nones)}, default=repr)
                b.events = len(self._events)
        b.run_update = self._final
        if not b:
            if finished:
                self._done = True
            return None
        return b

    def committed(self, b: Batch) -> None:
        pending, memory = self.store.pending, self.store.memory
        for key, (value, tid, where) in self._values.items():
            held = pending.get(key)
            if held is not None and held[0] is value:
                del pending[key]
            if where == "memory":  # written after all: no longer a session-only output
                memory.pop(key, None)
                self.not_persisted.pop(tid, None)
        self.written = True
        self._clear(b)
        if b.reset:
            self._reset = False
        if b.run_update is not None:
            self.store.final.pop(self._run_id, None)
            self._done = not self._rewrite     # the file was lost during this very write: not done yet
            if self._done:
                self._release()

    def failed(self, b: Batch, exc: BaseException) -> None:
        """Keep everything for the next attempt (the outputs meanwhile in memory, said in `not_persisted`).
        Once the run is over, give up the rows after `KEEP_ROWS` attempts and the events after `KEEP_EVENTS`:
        a full disk may still take the run's status, never large writes. The status is retried while we live."""
        self._warn(exc)
        if b.run_update is None:
            return
        self._final_tries += 1
        text = str(exc) if isinstance(exc, _Unavailable) else f"{type(exc).__name__}: {exc}"
        for key, (value, tid, _) in list(self._values.items()):
            self.store.memory[key] = (value, {"task": tid, "workflow": self.workflow, "run_id": self._run_id,
                                              "created": time.time(), "duration": None})
            self.store.pending.pop(key, None)
            self._values[key] = (value, tid, "memory")
            self.not_persisted[tid] = redact(f"the store could not be written ({text}); kept in memory for this "
                                             f"session (written later if the store recovers)")
        if self._final_tries >= KEEP_ROWS:
            self._rows, self._values = [], {}
        if self._final_tries >= KEEP_EVENTS:
            self._events, self._fps, self._json, self._notes, self._nones = [], {}, {}, {}, []

    def rewrite(self) -> None:
        """The store file was lost under this run (lost.py; any thread): write it again from its first event
        (`collect` rewinds; a final batch committed meanwhile does not end the recording, see `committed`)."""
        self._rewrite = True

    def _rewind(self) -> None:
        """On the thread that collects: forget what was written; the next batches carry the whole run again."""
        self._rewrite = False
        self._reset = self._rewound = True
        self._inserted, self._meta_row, self._scanned = False, None, 0
        self._events, self._outs, self._ended, self._rows = [], [], [], []
        self._values, self._fps, self._json, self._notes, self._nones = {}, {}, {}, {}, []
        self._lease_add, self._drop = list(self._held), []
        self._final, self._final_tries, self.retry_at = None, 0, 0.0
        self.hurry = True

    def broken(self, exc: BaseException) -> None:
        """A bug in collect(): say so once and stop recording this run (it goes on)."""
        self._warn(exc)
        self._done = True
        if self.st is not None and self.st.finished:
            self._release()

    def _release(self) -> None:
        """The run is recorded: what only recording needed goes (memory stays bounded over many kept runs)."""
        self._started = {}
        self.cache.release()

    def _clear(self, b: Batch) -> None:
        self._rows, self._values, self._drop, self._lease_add = [], {}, [], []
        if b.run_update is not None:
            self._extra = []
        if b.chunk is not None:
            del self._events[:b.events]
            self._fps, self._json, self._notes, self._nones = {}, {}, {}, []
        self._meta_row = None

    # ------------------------------------------------------------------ outputs (writer thread)
    def _output(self, ev: Any, reused: bool, cap: int | None = None) -> None:
        tid = ev[1]
        value = self.st.results.get(tid)
        reusable = not reused and self.cache.is_reusable(tid)
        if not reusable and type(value) in _JSON_VALUE and (type(value) is not str or len(value) < 256):
            self._json[tid] = value   # not for the cache: kept with the events (no row, no pickle)
            return
        key = self.cache.fingerprints[tid] if reusable else f"run:{self._run_id}:{tid}"
        self._fps[tid] = key
        if key in self._held:
            self._held.discard(key)
            self._drop.append(key)
        start = self._started.get(tid)
        duration = None if start is None else ev[0] - start
        try:
            blob = _pickle(value, cap)
        except _TooBig:
            raise
        except BaseException as exc:  # noqa: BLE001 - even SystemExit / KeyboardInterrupt from a __reduce__
            reason = redact(f"output ({type(value).__name__}) cannot be pickled ({type(exc).__name__}: {exc}); "
                            f"kept in memory for this session only")
            self.store.memory[key] = (value, {"task": tid, "workflow": self.workflow, "run_id": self._run_id,
                                              "created": time.time(), "duration": duration})
            self.store.pending.pop(key, None)
            self.not_persisted[tid] = reason
            self._notes[tid] = reason
            return
        self._rows.append((key, tid, self.workflow, self._run_id, time.time(), duration, len(blob),
                           sign.sign(key, blob), blob))
        self._values[key] = (value, tid, "pending")

    def _cached(self, ev: Any, cap: int | None = None) -> None:
        tid = ev[1]
        if self._rewound and self.cache.is_reusable(tid):   # the row it came from was in the lost file
            self._output(ev, False, cap)
        elif self.cache.is_reusable(tid):
            self._fps[tid] = self.cache.hits.get(tid) or self.cache.fingerprints[tid]
        else:  # reused, but not what the store holds for its fingerprint: keep it under this run
            self._output(ev, True, cap)

    def _run_insert(self) -> tuple[Any, ...]:
        return run_row(self.run, self.st, self.cache.g, self.workflow)

    def _warn(self, exc: BaseException) -> None:
        """One StoreWarning per run; the run itself goes on."""
        if not self._warned:
            self._warned = True
            text = str(exc) if isinstance(exc, _Unavailable) else f"store error {type(exc).__name__}: {exc}"
            warnings.warn(StoreWarning(redact(f"{text}. Outputs are kept in memory and written with the next batch; "
                                              f"if that fails too they stay in memory for this session only.")),
                          stacklevel=2)


_NEVER = "cache=False on the task: it runs every time"
_KIND = itemgetter(2)
_OWN_INFO = frozenset({"cached", "running", "blocked", "attempt_started", "item_done", "limit_changed", "run_started",
                       "run_finished", "run_paused", "run_resumed"})   # info we write ourselves (ids, names, numbers)


def _clean(kind: str, info: Any) -> Any:
    if type(info) in _SIMPLE:
        return info
    if kind in _OWN_INFO and type(info) is str:
        return info
    if kind == "run_started" and type(info) is dict and "remaining" in info:   # one number per task: ours
        return {**redact_obj({k: v for k, v in info.items() if k != "remaining"}), "remaining": info["remaining"]}
    return redact_obj(info)
