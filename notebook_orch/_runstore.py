"""One run's link to the store: fingerprints as tasks become ready, cache lookups, and writes as tasks finish.

`RunCache` is created by `Workflow._launch` for every run while the store is on. It gives
the scheduler its `cache_lookup(task_id, task, inputs) -> (hit, value, where)` hook and
subscribes to the run's events:

* `succeeded` -> the output is pickled at once (so later in-place edits by downstream
  tasks do not leak into the store) and queued; the queue is committed in one
  transaction as soon as the event loop gets to it (`loop.call_soon`: before any task
  started in the same iteration runs), unless the previous commit is younger than
  `COMMIT_GAP` (10 ms), in which case it is committed when that gap has passed. So a
  killed kernel loses at most the outputs of its last 10 ms; a busy run of thousands of
  tiny tasks makes at most ~100 commits a second.
* every event is buffered and written as a JSON chunk with those commits; `run_finished`
  writes the rest and the run's status and counts.

Fingerprints (see `fingerprint`) are memoised per run; an upstream task contributes its
fingerprint when its output is stored under it, else a hash of its output value (cache=False
tasks, fallback outputs, outputs reused by only=/from_/retry_failed).
"""
from __future__ import annotations

import json
import os
import pickle
import re
import socket
import time
from collections import Counter
from typing import TYPE_CHECKING, Any

from .events import Event
from .fingerprint import (Unhashable, agent_hash, combine_strings, function_globals, hash_callable, hash_value,
                          options_hash, reads)
from .graph import Graph
from .model import Agent, Task, parse_ttl
from .run import Run
from .store import Store, _Unavailable, open_store

if TYPE_CHECKING:  # pragma: no cover
    from .workflow import Workflow

__all__ = ["RunCache", "attach_store", "cache_column"]

_MISS: tuple[bool, Any, str] = (False, None, "")
_SIMPLE = frozenset({type(None), int, float, bool})
COMMIT_GAP = 0.01  # seconds: outputs are committed at once unless the last commit is younger than this
RETRY_AFTER = 5.0  # seconds to wait after the store could not be written (locked, disk full) before trying again
_SECRET_NAME = re.compile(r"(KEY|TOKEN|SECRET|PASSW|CREDENTIAL|AUTH)", re.I)
_KEYLIKE = re.compile(r"\b(sk-[A-Za-z0-9_\-]{12,}|sk_[A-Za-z0-9]{12,}|xox[abpr]-[A-Za-z0-9\-]{10,}|gh[po]_[A-Za-z0-9]{20,}|"
                      r"github_pat_[A-Za-z0-9_]{20,}|AKIA[A-Z0-9]{16}|AIza[A-Za-z0-9_\-]{30,}|hf_[A-Za-z0-9]{20,})")


def attach_store(workflow: "Workflow", graph: Graph, options: dict[str, Any]) -> "RunCache | None":
    """The RunCache for a new run of `workflow`, or None when its store is off (`Workflow(store=False)`)."""
    st = getattr(workflow, "store", True)
    if st is False or st is None:
        return None
    store = st if isinstance(st, Store) else open_store(None if st is True else st)
    force: set[str] = set(options.get("only") or ())
    if options.get("from_"):
        force |= graph.descendants([options["from_"]])
    return RunCache(store, workflow.name, graph, read=bool(options.get("cache", True)), force=force)


class RunCache:
    """Fingerprints, lookups and store writes for one run (see the module docstring)."""

    def __init__(self, store: Store, workflow: str, graph: Graph, *, read: bool = True,
                 force: set[str] | frozenset[str] = frozenset()):
        self.store = store
        self.workflow = workflow
        self.g = graph
        self.read = read                        # False: run(cache=False): outputs are written, never read
        self.force = set(force)                 # tasks selected by only= / from_=: always run
        self.fingerprints: dict[str, str] = {}  # task -> fingerprint (memoised)
        self.uncacheable: dict[str, str] = {}   # task -> why its output is not reused / not reusable
        self.not_persisted: dict[str, str] = {} # task -> why its output is only in memory
        self.run: Run | None = None
        self.s: Any = None                      # the Scheduler
        self._keys: dict[str, str] = {}         # task -> what it contributes to its downstream fingerprints
        self._reusable: set[str] = set()        # tasks whose output is stored / was found under their fingerprint
        self._hits: dict[str, str] = {}         # task -> fingerprint it was found under (this run's lookups)
        self._unhashable: set[str] = set()      # tasks whose fingerprint could not be computed
        self._fallback: set[str] = set()
        self._started: dict[str, float] = {}
        self._agents: dict[str | None, str] = {}
        self._bodies: dict[int, tuple[Any, str]] = {}           # id(fn) -> (fn, body digest): once per run
        self._options: dict[tuple[Any, ...], str] = {}          # option values -> digest
        self._reads: dict[tuple[Any, ...], tuple[list[str], list[str]]] = {}
        self._pending: list[tuple[tuple[Any, ...], Any]] = []   # (results row, value)
        self._flushed = 0                       # events of the run already written
        self._handlers = {"succeeded": self._on_output, "running": self._on_running, "cached": self._on_cached,
                          "fallback": self._on_fallback, "failed": self._on_note,
                          "run_started": lambda ev: self._start_run(),
                          "run_finished": lambda ev: self._flush(final=True)}
        self._fps: dict[str, str] = {}          # task -> results key, for the next events chunk
        self._handle: Any = None
        self._run_row: tuple[Any, ...] | None = None
        self._last_commit = 0.0                 # monotonic time of the last commit
        self._retry_after = 0.0                 # after a failed write: no new attempt before this time
        self._warned = False
        self._secrets = _env_secrets()

    # ------------------------------------------------------------------ wiring
    def bind(self, run: Run) -> None:
        """Follow `run` (call before its scheduler begins); exposes run.fingerprints / uncacheable / not_persisted."""
        self.run, self.s = run, run._s
        run.fingerprints = self.fingerprints
        run.uncacheable = self.uncacheable
        run.not_persisted = self.not_persisted
        run.subscribe(self._on_event)

    # ------------------------------------------------------------------ fingerprints
    def fingerprint(self, task_id: str) -> str | None:
        """The task's fingerprint in this run (its upstream must be finished), or None with the reason in uncacheable."""
        fp = self.fingerprints.get(task_id)
        if fp is not None:
            return fp
        if task_id in self._unhashable:
            return None
        try:
            fp = self._compute(self.g.index[task_id])
        except Exception as exc:  # noqa: BLE001 - Unhashable, or anything a strange object raises
            self._unhashable.add(task_id)
            why = str(exc) if isinstance(exc, Unhashable) else f"hashing failed ({type(exc).__name__}: {exc})"
            self.uncacheable[task_id] = f"not cacheable: {why}"
            return None
        self.fingerprints[task_id] = fp
        return fp

    def _compute(self, i: int) -> str:
        s, g = self.s, self.g
        task: Task = s.tasks[i]
        static = self._static(task)
        agent = task.agent
        adig = self._agents.get(agent)
        if adig is None:
            adig = self._agents[agent] = agent_hash(s.agents.get(agent) if agent else None)
        parts = [static, adig]
        for d in g.deps[i]:
            parts.append(g.ids[d])
            parts.append(self._input_key(d))
        fn = task.fn
        rkey = (id(fn), task.params, task.map_over)
        r = self._reads.get(rkey)
        if r is None:
            r = self._reads[rkey] = reads(task, g.index)
        params, glob = r
        for p in params:
            if p in s.params:
                value = s.params[p]
            elif s.namespace is not None and p in s.namespace:
                value = s.namespace[p]
            else:
                parts.append(f"param:{p}=default")
                continue
            try:
                parts.append(f"param:{p}={hash_value(value)}")
            except Unhashable as exc:
                raise Unhashable(f"parameter {p!r}: {exc}") from None
        if glob:
            ns = function_globals(fn)
            for n in glob:
                if n not in ns:
                    continue
                try:
                    parts.append(f"global:{n}={hash_value(ns[n])}")
                except Unhashable as exc:
                    raise Unhashable(f"global {n!r}: {exc}") from None
        return combine_strings(parts)

    def _static(self, task: Task) -> str:
        """What the Task object itself determines: its id, body digest and options digest (memoised per run)."""
        fn = task.fn
        if task.source is not None:
            body = "source:" + hash_value(task.source)
        elif task.prompt is not None:
            body = "prompt:" + hash_value(task.prompt)
        else:
            known = self._bodies.get(id(fn))
            if known is None:
                known = self._bodies[id(fn)] = (fn, hash_callable(fn))
            body = known[1]
        okey = (task.agent, task.after, task.output_model, task.guardrails, task.fallback, task.trigger,
                tuple(task.routes.items()) if task.routes else (), task.map_over)
        try:
            options = self._options.get(okey)
        except TypeError:  # an unhashable option value: no memo
            okey, options = None, None  # type: ignore[assignment]
        if options is None:
            options = options_hash(task)
            if okey is not None:
                self._options[okey] = options
        return f"{task.id}\x00{body}\x00{options}"

    def _input_key(self, d: int) -> str:
        tid = self.g.ids[d]
        key = self._keys.get(tid)
        if key is not None:
            return key
        st = self.s.status[d]
        if tid in self._reusable:
            key = "fp:" + self.fingerprints[tid]
        elif st in ("succeeded", "cached"):
            try:
                key = "value:" + hash_value(self.s.results.get(tid))
            except Unhashable as exc:
                raise Unhashable(f"the output of input {tid!r} cannot be hashed ({exc})") from None
        else:
            key = "status:" + st
        self._keys[tid] = key
        return key

    # ------------------------------------------------------------------ lookups
    def lookup(self, task_id: str, task: Task, inputs: dict[str, Any]) -> tuple[bool, Any, str]:
        """The scheduler's cache hook: (True, value, where) when a stored output matches the fingerprint."""
        if task_id in self.force:
            self.uncacheable[task_id] = "re-run on request (only= / from_=)"
            return _MISS
        fp = self.fingerprint(task_id)
        if fp is None:
            return _MISS
        if not self.read:
            self.uncacheable.setdefault(task_id, "stored outputs not read: run(cache=False) / --no-cache")
            return _MISS
        if not self.store.may_have(fp):
            return _MISS
        try:
            hit, value, meta = self.store.get(fp, parse_ttl(task.cache))
        except Exception as exc:  # noqa: BLE001 - e.g. a class that is not defined in this kernel yet
            self.uncacheable[task_id] = f"its stored output could not be loaded ({type(exc).__name__}: {exc}); ran again"
            return _MISS
        if not hit:
            return _MISS
        self._hits[task_id] = fp
        age = _age(time.time() - meta["created"])
        return True, value, f"{meta['where']}: run {meta['run_id']} ({age} ago)"

    # ------------------------------------------------------------------ events
    def _on_event(self, ev: Event) -> None:
        """Every event passes here; only a few kinds need work (the events themselves are read from
        the run's list at flush time)."""
        handler = self._handlers.get(ev[2])
        if handler is not None:
            try:
                handler(ev)
            except Exception as exc:  # noqa: BLE001 - say so, and keep recording the rest of the run
                self._warn(exc)

    def _on_running(self, ev: Event) -> None:
        if ev.task not in self._started:
            self._started[ev.task] = ev.t

    def _on_cached(self, ev: Event) -> None:
        fp = self._hits.get(ev.task)
        if fp is not None:
            self._reusable.add(ev.task)
            self._fps[ev.task] = fp
        elif self._matches_store(ev.task):  # reused by only= / from_ / retry_failed, and stored as is
            self._reusable.add(ev.task)
            self._fps[ev.task] = self.fingerprints[ev.task]
        else:  # reused, but not what the store holds for its fingerprint: keep it under this run
            self._on_output(ev)

    def _on_fallback(self, ev: Event) -> None:
        self._fallback.add(ev.task)

    def _on_note(self, ev: Event) -> None:  # failures: have the events written soon, like outputs
        self._schedule()

    def _matches_store(self, tid: str) -> bool:
        """Whether an output reused from an earlier run equals the stored output of the task's fingerprint
        (then downstream fingerprints may use the fingerprint, as after a store hit)."""
        fp = self.fingerprint(tid)
        if fp is None or not self.store.may_have(fp):
            return False
        try:
            hit, stored, _ = self.store.get(fp)
            return hit and hash_value(stored) == hash_value(self.s.results.get(tid))
        except Exception:  # noqa: BLE001 - unreadable or unhashable: treat as different
            return False

    def _on_output(self, ev: Event) -> None:
        tid = ev.task
        i = self.g.index[tid]
        task = self.s.tasks[i]
        run_id = self.run.id if self.run is not None else ""
        reusable = False
        if ev.kind == "succeeded":
            if task.cache is False:
                self.uncacheable[tid] = "cache=False on the task: it runs every time"
            elif tid in self._fallback:
                self.uncacheable[tid] = "its output came from its fallback: kept for this run, not reused"
            else:
                reusable = self.fingerprint(tid) is not None
        key = self.fingerprints[tid] if reusable else f"run:{run_id}:{tid}"
        if reusable:
            self._reusable.add(tid)
        self._fps[tid] = key
        value = self.s.results.get(tid)
        start = self._started.get(tid)
        now = time.time()
        duration = None if start is None else ev.t - start
        try:
            blob = pickle.dumps(value, protocol=5)
        except Exception as exc:  # noqa: BLE001 - unpicklable: this session only, the task still succeeded
            reason = (f"output ({type(value).__name__}) cannot be pickled ({type(exc).__name__}: {exc}); "
                      f"kept in memory for this session only")
            self.store.memory[key] = (value, {"task": tid, "workflow": self.workflow, "run_id": run_id,
                                              "created": now, "duration": duration})
            self.not_persisted[tid] = reason
            self.s.emit(i, "not_persisted", ev.attempt, reason)
            return
        self._pending.append(((key, tid, self.workflow, run_id, now, duration, len(blob), blob), value))
        self._schedule()

    def _start_run(self) -> None:
        run, s, g = self.run, self.s, self.g
        assert run is not None
        meta = {
            "ids": g.ids, "deps": g.deps, "inputs": g.inputs, "fallback_only": sorted(g.fallback_only),
            "routers": {str(k): v for k, v in g.routers.items()},
            "tasks": {t: _task_meta(task) for t, task in run.tasks.items()},
            "agents": {a: _agent_meta(ag) for a, ag in s.agents.items()},
            "limits": {"concurrency": s.limits.concurrency, "pools": dict(s.limits.pools)},
            "options": {k: v for k, v in run.options.items() if isinstance(v, (str, int, float, bool, list, type(None)))},
        }
        started = time.time()
        self._run_row = (run.id, self.workflow, started, None, "running", len(g.ids), None, socket.gethostname(),
                         os.getpid(), json.dumps(meta, default=repr))
        try:
            self.store.write_batch([], run_insert=self._run_row)
            self._run_row = None
        except Exception as exc:  # noqa: BLE001 - the run goes on; the row is written with the next batch
            self._warn(exc)
            self._retry_after = time.monotonic() + RETRY_AFTER

    def _schedule(self) -> None:
        loop = self.s.loop
        if self._handle is None and loop is not None and not self.run.state.finished:
            wait = max(self._last_commit + COMMIT_GAP, self._retry_after) - time.monotonic()
            self._handle = loop.call_soon(self._timed_flush) if wait <= 0 else loop.call_later(wait, self._timed_flush)

    def _timed_flush(self) -> None:
        try:
            self._flush()
        except Exception as exc:  # noqa: BLE001 - never an exception on the kernel's loop
            self._warn(exc)

    def _flush(self, final: bool = False) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        pending, self._pending = self._pending, []
        all_events = self.s.events
        events, start = all_events[self._flushed:], self._flushed
        self._flushed = len(all_events)
        fps, self._fps = self._fps, {}
        run_id = self.run.id if self.run is not None else ""
        chunk = None
        if events or fps:
            clean, simple = self._clean, _SIMPLE
            chunk = json.dumps({"events": [e if type(e[4]) in simple else (*e[:4], clean(e[4])) for e in events],
                                "fps": fps}, default=repr)
        update = None
        if final:
            counts = json.dumps(dict(Counter(self.s.status)))
            started = self.run.started_wall if self.run is not None and self.run.started_wall else None
            update = (time.time(), self.run.state.run_status, counts, started, run_id)
        try:
            self.store.write_batch([row for row, _ in pending], run_id, chunk, update, run_insert=self._run_row)
            self._run_row = None
            self._last_commit = time.monotonic()
        except Exception as exc:  # noqa: BLE001 - _Unavailable (locked, disk full) or anything else
            self._warn(exc)
            self._retry_after = time.monotonic() + RETRY_AFTER  # do not stall the loop on every batch
            if not final:  # try again with the next batch
                self._pending[:0] = pending
                self._flushed = start
                self._fps = {**fps, **self._fps}
                return
            for row, value in pending:
                key, tid = row[0], row[1]
                self.store.memory[key] = (value, {"task": tid, "workflow": row[2], "run_id": row[3],
                                                  "created": row[4], "duration": row[5]})
                self.not_persisted[tid] = f"the store could not be written ({exc}); kept in memory for this session"

    def _warn(self, exc: BaseException) -> None:
        """One StoreWarning per run; the run itself goes on."""
        if not self._warned:
            self._warned = True
            import warnings
            from .store import StoreWarning
            text = str(exc) if isinstance(exc, _Unavailable) else f"store error {type(exc).__name__}: {exc}"
            warnings.warn(StoreWarning(f"{text}. Outputs are kept in memory and written with the next batch; "
                                       f"if that fails too they stay in memory for this session only."), stacklevel=2)

    def _clean(self, info: Any) -> Any:
        """Event info as JSON-able data with secrets (key-like strings, secret env values) masked."""
        if info is None or isinstance(info, (bool, int, float)):
            return info
        if isinstance(info, str):
            return _redact(info, self._secrets)
        if isinstance(info, (tuple, list)):
            return [self._clean(x) for x in info]
        if isinstance(info, dict):   # usage, message, tool_call, stream events: kept as JSON objects
            return {str(k): self._clean(v) for k, v in info.items()}
        return _redact(repr(info), self._secrets)


def _env_secrets() -> list[str]:
    return [v for k, v in os.environ.items() if _SECRET_NAME.search(k) and len(v) >= 8]


def _redact(text: str, secrets: list[str]) -> str:
    for sec in secrets:
        if sec in text:
            text = text.replace(sec, "***")
    return _KEYLIKE.sub("***", text) if ("sk" in text or "_" in text or "AKIA" in text or "AIza" in text) else text


def _age(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    if seconds < 129600:
        return f"{seconds / 3600:.0f} h"
    return f"{seconds / 86400:.0f} days"


def _task_meta(task: Task) -> dict[str, Any]:
    """The options a display of a loaded run needs (no bodies, no callables); defaults left out."""
    d = task.__dict__
    m: dict[str, Any] = {}
    if d["agent"]:
        m["agent"] = d["agent"]
    if d["after"]:
        m["after"] = list(d["after"])
    if d["map_over"]:
        m["map_over"] = d["map_over"]
    if d["routes"]:
        m["routes"] = {k: list(v) for k, v in d["routes"].items()}
    if d["trigger"] != "all_success":
        m["trigger"] = d["trigger"]
    if d["priority"]:
        m["priority"] = d["priority"]
    if isinstance(d["fallback"], str):
        m["fallback"] = d["fallback"]
    if d["resources"]:
        m["resources"] = dict(d["resources"])
    if d["tags"]:
        m["tags"] = list(d["tags"])
    if d["description"]:
        m["description"] = d["description"]
    if d["prompt"] is not None:
        m["kind"] = "prompt"
    return m


def _agent_meta(agent: Agent) -> dict[str, Any]:
    """Only what a display needs; never llm objects, base URLs or key names."""
    return {"role": agent.role, "max_concurrency": agent.max_concurrency, "rate_limit": agent.rate_limit}


def cache_column(run: Run) -> dict[str, str]:
    """Task id -> one line about its cache state, for `%orch status`: where a cached output came from,
    'stored', or why it is not cached / not persisted."""
    where = {ev.task: str(ev.info) for ev in run.events if ev.kind == "cached"}
    unc = getattr(run, "uncacheable", {}) or {}
    notp = getattr(run, "not_persisted", {}) or {}
    out = {}
    for t, st in run.statuses.items():
        if t in notp:
            out[t] = "not persisted: " + notp[t]
        elif st == "cached":
            out[t] = "cached from " + where.get(t, "the store")
        elif t in unc:
            out[t] = unc[t]
        elif st == "succeeded":
            out[t] = "stored" if t in getattr(run, "fingerprints", {}) else ""
        else:
            out[t] = ""
    return out

