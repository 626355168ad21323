"""The recorder: follows one run's events and has them written to the store. It never emits into the run.

On the event loop it does only what is cheap: per event one call that, for a `succeeded`
output stored under a fingerprint, makes the value findable by this process's next lookups
at once (`Store.pending`) and wakes the writer thread. Everything else happens on the
writer thread (`writer.py`), in `collect()`: it reads the events added since the last
batch (the run's event list only grows), pickles and signs outputs, redacts the events
(`notebook_orch.redact`) into a JSON chunk and, once the run is over, adds the run's
status and counts. What could not be kept is written down in the recorder's own notes
(`not_persisted`, read by `run.not_persisted`, the metrics and `%orch status`), never as
an event of the run.

Outputs are pickled off the loop, so a body that mutates its input in place while the
writer pickles that input may have the mutated value stored (or the pickling fails: then
the output is kept in memory for the session, with the reason). Small JSON-able outputs of
tasks that are not cached (`cache=False`) are kept in the events chunk itself, not as rows.
"""
from __future__ import annotations

import json
import os
import pickle
import socket
import time
import warnings
from collections import Counter
from typing import Any

from ..redact import learn_run, redact, redact_obj
from . import codec, sign
from .cache import RunCache
from .fingerprint import hash_value
from .sqlite import Batch, Store, StoreWarning, _Unavailable

__all__ = ["Recorder"]

_SIMPLE = frozenset({type(None), int, float, bool})
_JSON_VALUE = frozenset({type(None), int, float, bool, str})
EVENTS_EVERY = 0.5   # seconds between events chunks of a live run (outputs are committed at once)
_ENDED = frozenset({"failed", "upstream_failed", "skipped", "cancelled"})
KEEP_ROWS = 3     # failed attempts at a finished run's batch before its outputs stay in memory only
KEEP_EVENTS = 5   # ... before its events are given up too (its status is retried as long as the process lives)


class _Buffer:
    """A writable that keeps pickle's frames: writing through Python code lets the GIL go between frames,
    so pickling a 200 MB output does not hold the event loop for the whole dump."""

    __slots__ = ("parts",)

    def __init__(self) -> None:
        self.parts: list[bytes] = []

    def write(self, b: Any) -> int:
        self.parts.append(bytes(b))
        return len(b)


def _pickle(value: Any) -> bytes:
    buf = _Buffer()
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
        self.run: Any = None
        self.st: Any = None                      # the run's state (a RunState, or today's scheduler)
        self._run_id = ""
        self._flushed = 0                        # events of the run already turned into rows / chunks
        self._woke = False
        self._fallback: set[str] = set()         # written on the loop: tasks whose output came from a fallback
        self._matched: set[str] = set()          # reused outputs equal to the stored one of their fingerprint
        self._outs: list[Any] = []               # succeeded / cached events not yet collected (appended on the loop)
        self._ended: list[str] = []              # tasks that ended without an output, not yet collected
        self._urgent = False                     # an output for the cache (or the run's end) waits: write it now
        self._handlers = {"running": self._on_running, "succeeded": self._on_succeeded, "cached": self._on_cached,
                          "fallback": self._on_fallback, "failed": self._on_ended, "upstream_failed": self._on_ended,
                          "skipped": self._on_ended, "cancelled": self._on_ended, "run_finished": self._on_finished}
        self._started: dict[str, float] = {}
        self._held: set[str] = set()             # fingerprints this run leases
        # what the next batch carries (kept across a failed write, sent again with the next one)
        self._rows: list[tuple[Any, ...]] = []
        self._values: dict[str, tuple[Any, str, str]] = {}   # key -> (value, task, where it waits)
        self._events: list[Any] = []
        self._fps: dict[str, str] = {}
        self._json: dict[str, Any] = {}
        self._notes: dict[str, str] = {}
        self._drop: list[str] = []
        self._meta_row: tuple[Any, ...] | None = None   # the run's row, until it is written
        self._inserted = False
        self._final: tuple[Any, ...] | None = None
        self._final_tries = 0
        self._events_at = time.monotonic()      # when the last events chunk was built
        self.hurry = False                      # set by drain(): write the events now too
        self._done = False
        self._warned = False

    # ------------------------------------------------------------------ wiring (on the loop)
    def bind(self, run: Any) -> None:
        """Follow `run` (before its scheduler begins); exposes run.fingerprints / uncacheable / not_persisted."""
        self.run = run
        self.st = getattr(run, "state", None) or run._s
        self.cache.state = self.st
        self._run_id = run.id
        run.fingerprints = self.cache.fingerprints
        run.uncacheable = self.cache.uncacheable
        run.not_persisted = self.not_persisted
        run._recorder = self
        learn_run(run)                   # secret-named globals of the bodies: masked wherever text leaves
        run.subscribe(self._on_event)
        self.store.enqueue(self)

    def _on_event(self, ev: Any) -> None:
        """On the loop, per event: one dict lookup; the few kinds that matter are handled below."""
        h = self._handlers.get(ev[2])
        if h is not None:
            h(ev)

    def _on_running(self, ev: Any) -> None:
        self._started.setdefault(ev[1], ev[0])

    def _on_succeeded(self, ev: Any) -> None:
        """Before downstream tasks are looked up: decide whether the output is reusable (downstream
        fingerprints then use its fingerprint) and make it findable by this process at once."""
        tid = ev[1]
        cache = self.cache
        self._outs.append(ev)
        if cache.tasks[tid].cache is False:
            cache.uncacheable[tid] = "cache=False on the task: it runs every time"
            return
        if tid in self._fallback:
            cache.uncacheable[tid] = "its output came from its fallback: kept for this run, not reused"
            return
        fp = cache.fingerprints.get(tid)
        if fp is not None:
            cache.reusable.add(tid)
            self.store.pending[fp] = (self.st.results.get(tid), {
                "task": tid, "workflow": self.workflow, "run_id": self._run_id, "created": time.time(),
                "duration": None})
            self._urgent = True
            self._wake()

    def _on_cached(self, ev: Any) -> None:
        tid = ev[1]
        self._outs.append(ev)
        if tid in self.cache.hits:
            self.cache.reusable.add(tid)
        elif self._matches_store(tid):  # reused by only= / from_ / retry_failed, and stored as is
            self.cache.reusable.add(tid)
            self._matched.add(tid)

    def _on_fallback(self, ev: Any) -> None:
        self._fallback.add(ev[1])

    def _on_ended(self, ev: Any) -> None:
        if ev[1] in self.cache.fingerprints:
            self._ended.append(ev[1])
        if ev[2] == "failed":
            self._wake()

    def _on_finished(self, ev: Any) -> None:
        self._urgent = True
        self._wake()

    def _wake(self) -> None:
        if not self._woke:
            self._woke = True
            writer = self.store.writer
            if writer is not None:
                writer.wake()

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
        return (not self._rows and not self._events and self._flushed >= len(self.st.events)
                and not self.cache.leases and not self.st.finished)

    def collect(self) -> Batch | None:
        """The next batch: new events, their outputs, leases, the run row (see the module docstring)."""
        self._woke = False
        st = self.st
        finished = st.finished                  # read first: every event up to run_finished is in the list
        events = st.events
        n = len(events)
        if not self._inserted:
            self._inserted = True
            self._meta_row = self._run_insert()
        now = time.monotonic()
        lazy = not (finished or self.hurry or self._urgent or self.cache.leases or self._meta_row is not None
                    or now - self._events_at > EVENTS_EVERY)
        if lazy:  # nothing the cache or a resume needs yet: leave the work for later (less GIL for the loop)
            return None
        self._urgent = False
        outs, self._outs = self._outs, []
        for ev in outs:
            if ev[2] == "succeeded":
                self._output(ev, False)
            else:
                self._cached(ev)
        ended, self._ended = self._ended, []
        for tid in ended:
            fp = self.cache.fingerprints.get(tid)
            if fp in self._held:
                self._held.discard(fp)
                self._drop.append(fp)
        self._events.extend(events[self._flushed:n])
        self._flushed = n
        leases, self.cache.leases = self.cache.leases, []
        for fp in leases:
            self._held.add(fp)
        if finished and self._final is None:
            counts = json.dumps(dict(Counter(st.status)))
            started = getattr(self.run, "started_wall", None) or getattr(st, "started_wall", None)
            self._final = (time.time(), st.run_status, counts, started, self._run_id)
            self.store.final[self._run_id] = st.run_status
            self._drop.extend(self._held)
            self._held.clear()
        b = Batch(self._run_id)
        b.run_insert = self._meta_row
        b.rows = self._rows
        b.lease_add = [fp for fp in leases]
        b.lease_drop = self._drop
        if finished or self.hurry or now - self._events_at > EVENTS_EVERY or len(self._events) > 100_000:
            if self._events or self._fps or self._json or self._notes:
                self._events_at, self.hurry = now, False
                packed = codec.encode(self._events, self.cache.g.index, _clean)
                b.chunk = json.dumps({"ev": packed, "fps": self._fps, "values": self._json, "notes": self._notes},
                                     default=repr)
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
            if pending.get(key, (None,))[0] is value:
                del pending[key]
            if where == "memory":  # written after all: no longer a session-only output
                memory.pop(key, None)
                self.not_persisted.pop(tid, None)
        self._clear(b)
        if b.run_update is not None:
            self.store.final.pop(self._run_id, None)
            self._done = True

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
            self._events, self._fps, self._json, self._notes = [], {}, {}, {}

    def broken(self, exc: BaseException) -> None:
        """A bug in collect(): say so once and stop recording this run (it goes on)."""
        self._warn(exc)
        self._done = True

    def _clear(self, b: Batch) -> None:
        self._rows, self._values, self._drop = [], {}, []
        if b.chunk is not None:
            del self._events[:b.events]
            self._fps, self._json, self._notes = {}, {}, {}
        self._meta_row = None

    # ------------------------------------------------------------------ outputs (writer thread)
    def _output(self, ev: Any, reused: bool) -> None:
        tid = ev[1]
        value = self.st.results.get(tid)
        reusable = not reused and tid in self.cache.reusable   # decided on the loop (_on_event)
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
            blob = _pickle(value)
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

    def _cached(self, ev: Any) -> None:
        tid = ev[1]
        fp = self.cache.hits.get(tid)
        if fp is not None:
            self._fps[tid] = fp
        elif tid in self._matched:
            self._fps[tid] = self.cache.fingerprints[tid]
        else:  # reused, but not what the store holds for its fingerprint: keep it under this run
            self._output(ev, True)

    def _matches_store(self, tid: str) -> bool:
        fp = self.cache.fingerprint(tid)
        if fp is None or not self.store.may_have(fp):
            return False
        try:
            hit, stored, _ = self.store.get(fp)
            return hit and hash_value(stored) == hash_value(self.st.results.get(tid))
        except Exception:  # noqa: BLE001 - unreadable or unhashable: treat as different
            return False

    def _run_insert(self) -> tuple[Any, ...]:
        run, st, g = self.run, self.st, self.cache.g
        meta = {
            "ids": g.ids, "deps": g.deps, "inputs": g.inputs, "fallback_only": sorted(g.fallback_only),
            "routers": {str(k): v for k, v in g.routers.items()},
            "tasks": {t: m for t, m in ((t, _task_meta(task)) for t, task in run.tasks.items()) if m},
            "agents": {a: _agent_meta(ag) for a, ag in run.agents.items()},
            "limits": _limits_meta(st.limits),
            "options": {k: redact_obj(v) for k, v in run.options.items()
                        if isinstance(v, (str, int, float, bool, list, type(None)))},
        }
        return (run.id, self.workflow, getattr(run, "started_wall", None) or time.time(), None, "running",
                len(g.ids), None, socket.gethostname(), os.getpid(), json.dumps(meta, default=repr))

    def _warn(self, exc: BaseException) -> None:
        """One StoreWarning per run; the run itself goes on."""
        if not self._warned:
            self._warned = True
            text = str(exc) if isinstance(exc, _Unavailable) else f"store error {type(exc).__name__}: {exc}"
            warnings.warn(StoreWarning(redact(f"{text}. Outputs are kept in memory and written with the next batch; "
                                              f"if that fails too they stay in memory for this session only.")),
                          stacklevel=2)


def _clean(info: Any) -> Any:
    return info if type(info) in _SIMPLE else redact_obj(info)


def _limits_meta(lim: Any) -> dict[str, Any]:
    if isinstance(lim, dict):
        return {"concurrency": lim.get("concurrency"), "pools": dict(lim.get("pools") or {})}
    return {"concurrency": lim.concurrency, "pools": dict(lim.pools)}


def _task_meta(task: Any) -> dict[str, Any]:
    """The options a display of a loaded run needs (no bodies, no callables, no edges: those are in the
    graph); defaults left out."""
    d = task.__dict__
    m: dict[str, Any] = {}
    for name in ("agent", "map_over", "priority", "description"):
        if d[name]:
            m[name] = d[name] if name != "description" else redact(d[name])
    if d["routes"]:
        m["routes"] = {k: list(v) for k, v in d["routes"].items()}
    if d["trigger"] != "all_success":
        m["trigger"] = d["trigger"]
    if isinstance(d["fallback"], str):
        m["fallback"] = d["fallback"]
    if d["resources"]:
        m["resources"] = dict(d["resources"])
    if d["tags"]:
        m["tags"] = list(d["tags"])
    if d["prompt"] is not None:
        m["kind"] = "prompt"
    return m


def _agent_meta(agent: Any) -> dict[str, Any]:
    """Only what a display needs; never llm objects, base URLs or key names."""
    return {"role": redact(agent.role) if agent.role else agent.role, "max_concurrency": agent.max_concurrency,
            "rate_limit": agent.rate_limit}
